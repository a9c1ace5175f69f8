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

``read_table`` reads every column with pandas. ``read_columns`` reads only the
columns asked for, with pyarrow's parser: for files of millions of rows, which
it reads several times faster, holding little more than those columns.
"""

import argparse
import codecs
import csv
import re
from itertools import islice
from pathlib import Path
from typing import NamedTuple

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


class Layout(NamedTuple):
    """How a file's lines split into columns: detected from its first lines, or given."""

    sep: str
    names: list[str]  # each column's: from --names, else the header line, else headerless_names
    has_header: bool
    first_row: int  # the line number of the first row of values


def detect_layout(
    path: Path,
    *,
    sep: str | None = None,
    names: list[str] | None = None,
    encoding: str = DEFAULT_ENCODING,
    headerless_names: tuple[str, ...] = (),
) -> Layout | None:
    """The separator, column names and header of a file, from its first lines;
    None for an empty file. The arguments are read_table's."""
    path = Path(path)
    try:
        with path.open(encoding=encoding) as file:  # universal newlines: \r\n reads as \n
            head = list(islice(file, SNIFF_LINES))
    except UnicodeDecodeError as error:
        raise DataError(_undecodable_message(path, encoding, error)) from None
    lines = [line for line in head if line.strip()]
    if not lines:
        return None
    first_line = head.index(lines[0]) + 1  # after any blank lines
    if sep is None:
        sep = _detect_separator(lines)
    try:
        first_fields = _split_line(lines[0], sep)
    except csv.Error as error:  # such as a field over the csv module's size limit
        raise DataError(_not_a_table_message(path, sep, str(error))) from None
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
    return Layout(
        sep=sep,
        names=first_fields if names is None else names,
        has_header=has_header,
        first_row=first_line + 1 if has_header else first_line,
    )


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
    layout = detect_layout(
        path, sep=sep, names=names, encoding=encoding, headerless_names=headerless_names
    )
    if layout is None:
        return pd.DataFrame()
    if len(layout.sep) == 1:
        # Whole columns at once: in blocks, pandas' C parser would read a column with
        # a word deep in it as numbers above and text below, and an id as two ids.
        parser = {"sep": layout.sep, "engine": "c", "low_memory": False}
    else:
        # pandas reads a longer separator as a regular expression, and only with its
        # python engine, which reads whole columns.
        parser = {"sep": re.escape(layout.sep), "engine": "python"}
    try:
        frame = pd.read_csv(
            path,
            **parser,
            header=0 if layout.has_header else None,
            # A header line's names are pandas' to read (quotes, repeated names),
            # unless --names replaces them.
            names=names if layout.has_header else layout.names,
            encoding=encoding,
            dtype=str if as_text else None,
            keep_default_na=not as_text,
        )
    except UnicodeDecodeError as error:
        raise DataError(_undecodable_message(path, encoding, error)) from None
    except (pd.errors.ParserError, csv.Error) as error:
        # pandas' messages span lines, and the C parser's start with its own name.
        reason = " ".join(str(error).split()).removeprefix("Error tokenizing data. C error: ")
        raise DataError(_not_a_table_message(path, layout.sep, reason)) from None
    if as_text:
        frame = frame.fillna("")  # a row with fewer fields than the header
    # Each row's line in the file, for error messages (rows spanning lines shift them).
    frame.index += layout.first_row
    return frame


def read_columns(path: Path, layout: Layout, columns: list[str], encoding: str = DEFAULT_ENCODING):
    """The named columns of a file of numbers and plain text, as read_table reads
    them (empty values are NaN), but read by pyarrow: several times faster, and
    holding little more than those columns, where pandas holds every column.

    None where pyarrow cannot read the file as read_table would: a row with more
    or fewer fields than the first, a column whose values change type partway,
    dates (pandas keeps them as text), bytes that do not decode, or a separator
    other than one character or one character twice, such as MovieLens' '::'.
    read_table then reads it, more slowly, and names the line that is wrong, if
    one is.
    """
    import pandas as pd  # imported here: training imports data.py, and needs neither
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    path = Path(path)
    sep = layout.sep
    if sep == sep[0] * 2:
        # pyarrow splits on one character: '1::122::5' split on ':' is 1, '', 122, '', 5.
        # Each '' column is named (no name from the header holds '::') and must be
        # empty on every row, which it is not where a value holds a ':'.
        gaps = [f"{sep}{number}" for number in range(1, len(layout.names))]
        names = [layout.names[0]]
        for gap, name in zip(gaps, layout.names[1:], strict=True):
            names += [gap, name]
    elif len(sep) == 1:
        names, gaps = layout.names, []
    else:
        return None
    try:
        # The streaming reader holds one block of the file at a time besides the
        # columns read; read_csv holds about three times the columns as it reads.
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(
                column_names=names,
                skip_rows=layout.first_row - 1,
                # Blocks of 8 MB, not 1: Arrow's allocator gives back the memory of
                # large buffers once they are freed, and of small ones rarely.
                block_size=8 << 20,
                # pyarrow reads UTF-8 itself, byte-order mark or not; other
                # encodings it reads through Python's codecs.
                encoding="utf8" if codecs.lookup(encoding).name.startswith("utf-8") else encoding,
            ),
            parse_options=pa_csv.ParseOptions(delimiter=sep[0]),
            convert_options=pa_csv.ConvertOptions(
                include_columns=[*columns, *gaps],
                column_types=dict.fromkeys(gaps, pa.null()),
                strings_can_be_null=True,  # an empty text value is missing, as in pandas
            ),
        )
        # A column's type comes from the first block: a value of another type
        # further on (a word among numbers) fails here too.
        table = reader.read_all().drop_columns(gaps)
    except (pa.ArrowInvalid, UnicodeDecodeError):
        return None
    # Bytes that are not UTF-8 read as binary, and no rows as the null type.
    if not all(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_string(kind)
        for kind in table.schema.types
    ):
        return None
    # A column at a time, each freed before the next is copied, so that the
    # file's columns are held about once, not twice. The copies come from the
    # system's allocator, which gives memory back when pandas frees it; Arrow's
    # keeps what it frees for reuse, and is told to let go.
    series = {}
    for name in table.column_names:
        series[name] = table.column(name).to_pandas(memory_pool=pa.system_memory_pool())
        table = table.drop_columns([name])
        pa.default_memory_pool().release_unused()
    frame = pd.DataFrame(series, copy=False)
    frame.index += layout.first_row
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


def _not_a_table_message(path: Path, sep: str, reason: str) -> str:
    return (
        f"{path} does not read as a table separated by {sep!r}: {reason}; "
        "fix that line, or pass --sep if the separator is another"
    )


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
