"""TorchServe handler for the text classifier, packed into the model archive.

Each request's body is a JSON list of texts (or one text); TorchServe groups
concurrent requests into one batch, and every request gets back a list with,
per text: the label, the probability of each label, and the raw logits.
"""

import json
import os

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from ts.torch_handler.base_handler import BaseHandler


class TextClassifierHandler(BaseHandler):
    def initialize(self, context):
        properties = context.system_properties
        model_dir = properties["model_dir"]
        gpu = properties.get("gpu_id")
        self.device = torch.device(
            f"cuda:{gpu}" if torch.cuda.is_available() and gpu is not None else "cpu"
        )
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        self.model.to(self.device).eval()
        with open(os.path.join(model_dir, "setup_config.json")) as file:
            self.max_length = int(json.load(file)["max_length"])
        with open(os.path.join(model_dir, "index_to_name.json")) as file:
            names = json.load(file)
        self.label_names = [names[str(i)] for i in range(len(names))]
        self.initialized = True

    def preprocess(self, requests):
        """Every request's texts, and how many each request sent."""
        batches = []
        for request in requests:
            body = request.get("data") if request.get("data") is not None else request.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body.decode("utf-8"))
            items = body if isinstance(body, list) else [body]
            batches.append([i["text"] if isinstance(i, dict) else str(i) for i in items])
        return batches

    def inference(self, batches, *args, **kwargs):
        texts = [text for batch in batches for text in batch]
        encoded = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        ).to(self.device)
        with torch.no_grad():
            return self.model(**encoded).logits.float().cpu(), [len(batch) for batch in batches]

    def postprocess(self, outputs):
        logits, sizes = outputs
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
        # One response per request, in the order the requests came.
        responses, start = [], 0
        for size in sizes:
            responses.append(results[start : start + size])
            start += size
        return responses
