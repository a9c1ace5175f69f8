"""Reading your data files: CSV and its relatives, as they come.

One reader serves every data set, so a file that reads for one reads for all:

- Encoding: UTF-8, with or without the byte-order mark that Excel's "CSV UTF-8"
  writes; any other with ``--encoding``. A byte that does not decode is an error
  naming its line and the flag.
- Line endings: ``\\n`` or ``\\r\\n``.
- Separator: detected from the first lines (comma, tab, semicolon, ``|``, or the
  ``::`` of MovieLens' ratings.dat), or given with ``--sep``.
- Header: the first line names the columns, unless it holds only numbers (as in
  MovieLens' u.data and ratings.dat); ``--names`` names them either way.

Anything wrong with a file is a DataError: one line saying what was found and
the flag or edit that fixes it.
"""

import argparse
import codecs
import csv
import re
from itertools import islice
from pathlib import Path

# UTF-8 that drops a leading byte-order mark, and reads plain UTF-8 unchanged.
DEFAULT_ENCODING = "utf-8-sig"
DETECTED_SEPARATORS = ",\t;|"
SNIFF_LINES = 50


class DataError(ValueError):
    """Bad input data; the message says what is wrong and how to fix it."""


def separator(text: str) -> str:
    """An argparse type: '\\t' as typed in a shell means a tab."""
    sep = text.replace("\\t", "\t")
    if not sep:
        raise argparse.ArgumentTypeError("must be one or more characters, such as ';' or '\\t'")
    return sep


def column_names(text: str) -> list[str]:
    """An argparse type: 'user,item,rating' -> ["user", "item", "rating"]."""
    names = [name.strip() for name in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"must be distinct comma-separated names such as user,item,rating, got {text}"
        )
    return names


def encoding_name(text: str) -> str:
    """An argparse type: a text encoding Python knows, such as latin-1 or cp1252."""
    try:
        codecs.lookup(text)
    except LookupError:
        raise argparse.ArgumentTypeError(
            f"must be a text encoding such as utf-8, latin-1 or cp1252, got {text}"
        ) from None
    return text


def add_table_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--sep, --names and --encoding: for a file whose layout detection gets wrong."""
    group = parser.add_argument_group("reading the file (detected when not given)")
    group.add_argument(
        "--sep",
        type=separator,
        default=None,
        help="column separator, such as ';', '\\t' or '::' (default: detected among , tab ; | ::)",
    )
    group.add_argument(
        "--names",
        type=column_names,
        default=None,
        metavar="NAME,...",
        help="a name for each column, in order; they replace the header line, "
        "which is the first line unless it holds only numbers",
    )
    group.add_argument(
        "--encoding",
        type=encoding_name,
        default=DEFAULT_ENCODING,
        help="the file's text encoding, such as latin-1 or cp1252 "
        "(default: UTF-8, with or without a byte-order mark)",
    )
    return parser


def read_table(
    path: Path,
    *,
    sep: str | None = None,
    names: list[str] | None = None,
    encoding: str = DEFAULT_ENCODING,
    headerless_names: tuple[str, ...] = (),
    as_text: bool = False,
):
    """The rows of a delimited text file as a DataFrame, indexed by their line in the file.

    sep: the column separator; detected when None.
    names: a name for each column; they replace the header line, which is the
        first line unless it holds only numbers.
    headerless_names: names for the leading columns of a file whose first line
        holds only numbers, when ``names`` is not given (a known headerless layout).
    as_text: every value as the string in the file ('' where empty); otherwise
        pandas infers numbers, and empty values are NaN.

    An empty file gives an empty frame with no columns.
    """
    import pandas as pd  # imported here: training imports data.py, and needs no pandas

    path = Path(path)
    try:
        with path.open(encoding=encoding) as file:  # universal newlines: \r\n reads as \n
            lines = [line for line in islice(file, SNIFF_LINES) if line.strip()]
        if not lines:
            return pd.DataFrame()
        if sep is None:
            sep = _detect_separator(lines)
        first_fields = _split_line(lines[0], sep)
        has_header = not all(map(_is_number, first_fields))
        if names is None and not has_header:
            if len(first_fields) > len(headerless_names):
                raise DataError(
                    f"{path} has no header line (its first line, {lines[0].strip()!r}, holds "
                    f"only numbers), so its {len(first_fields)} columns cannot be told apart; "
                    "add a header line, or pass --names with a name for each column"
                )
            names = list(headerless_names[: len(first_fields)])
        if names is not None and len(names) != len(first_fields):
            raise DataError(
                f"--names gives {len(names)} names, but {path} has {len(first_fields)} "
                f"columns separated by {sep!r} (first line {lines[0].strip()!r}); "
                "give one name per column, or --sep if the separator is another"
            )
        # pandas reads a separator longer than one character as a regular expression,
        # and only with its python engine.
        frame = pd.read_csv(
            path,
            sep=sep if len(sep) == 1 else re.escape(sep),
            engine="c" if len(sep) == 1 else "python",
            header=0 if has_header else None,
            names=names,
            encoding=encoding,
            dtype=str if as_text else None,
            keep_default_na=not as_text,
        )
    except UnicodeDecodeError as error:
        raise DataError(_undecodable_message(path, encoding, error)) from None
    except (pd.errors.ParserError, csv.Error) as error:
        # pandas' messages span lines, and the C parser's start with its own name.
        reason = " ".join(str(error).split()).removeprefix("Error tokenizing data. C error: ")
        raise DataError(
            f"{path} does not read as a table separated by {sep!r}: {reason}; fix that line, "
            "or pass --sep if the separator is another"
        ) from None
    if as_text:
        frame = frame.fillna("")  # a row with fewer fields than the header
    # Each row's line in the file, for error messages (rows spanning lines shift them).
    frame.index += 2 if has_header else 1
    return frame


def _detect_separator(lines: list[str]) -> str:
    # MovieLens' ratings.dat (ml-1m) separates with '::', which no CSV sniffer knows.
    if all(line.count("::") == lines[0].count("::") > 0 for line in lines):
        return "::"
    try:
        return csv.Sniffer().sniff("".join(lines), delimiters=DETECTED_SEPARATORS).delimiter
    except csv.Error:  # a single column, or lines too irregular to tell: read as CSV
        return ","


def _split_line(line: str, sep: str) -> list[str]:
    if len(sep) == 1:
        return next(csv.reader([line], delimiter=sep))
    return line.rstrip("\n").split(sep)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _undecodable_message(path: Path, encoding: str, error: UnicodeDecodeError) -> str:
    """Where the first byte that does not decode is, and the flag that reads it."""
    shown = "UTF-8" if codecs.lookup(encoding).name.startswith("utf-8") else encoding
    with path.open("rb") as file:
        starts_utf16 = file.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    if starts_utf16:  # Excel's "Unicode Text"
        fix = "it starts with a UTF-16 byte-order mark: pass --encoding utf-16"
    else:
        fix = "pass the file's encoding, such as --encoding latin-1 (Excel on Windows: cp1252)"
    offset = 0
    # pandas reports the position within a buffer, so find the line by decoding each one.
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                raw.decode(encoding)
            except UnicodeDecodeError as line_error:
                return (
                    f"{path} line {number} (byte {offset + line_error.start}): "
                    f"0x{raw[line_error.start]:02x} is not {shown} text; {fix}"
                )
            offset += len(raw)
    return f"{path} is not {shown} text ({error.reason}); {fix}"
