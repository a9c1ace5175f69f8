"""Ray Serve deployment of the text classifier, started by ray_serve.py.

Each request's body is a JSON list of texts (or one text); Ray Serve groups
concurrent requests into one batch, and every request gets back a list with,
per text: the label, the probability of each label, and the raw logits.
"""

import json
from pathlib import Path

import torch
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse
from transformers import AutoModelForSequenceClassification, AutoTokenizer


@serve.deployment
class Model:
    def __init__(self, model_dir: str, max_batch_size: int, batch_wait_timeout_s: float):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        self.model.to(self.device).eval()
        folder = Path(model_dir)
        self.max_length = int(json.loads((folder / "setup_config.json").read_text())["max_length"])
        names = json.loads((folder / "index_to_name.json").read_text())
        self.label_names = [names[str(i)] for i in range(len(names))]
        # The batch's size and wait are the server's flags, set when it starts.
        self.predict.set_max_batch_size(max_batch_size)
        self.predict.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body must be JSON: a list of texts"}, 400)
        items = body if isinstance(body, list) else [body]
        texts = [item["text"] if isinstance(item, dict) else str(item) for item in items]
        return JSONResponse(await self.predict(texts))

    @serve.batch
    async def predict(self, requests: list[list[str]]) -> list[list[dict]]:
        """Every request's texts scored in one batch; one list of answers per request."""
        texts = [text for request in requests for text in request]
        if not texts:
            return [[] for _ in requests]
        encoded = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        ).to(self.device)
        with torch.no_grad():
            logits = self.model(**encoded).logits.float().cpu()
        results = []
        for row in logits:
            probabilities = row.softmax(dim=-1)
            results.append(
                {
                    "label": self.label_names[int(row.argmax())],
                    "probabilities": dict(
                        zip(self.label_names, probabilities.tolist(), strict=True)
                    ),
                    "logits": row.tolist(),
                }
            )
        # One answer per request, in the order the requests came.
        answers, start = [], 0
        for request in requests:
            answers.append(results[start : start + len(request)])
            start += len(request)
        return answers
