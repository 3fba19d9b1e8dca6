"""The API's JSON parser: DRF's, also refusing the JSON it would let through to a 500."""

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser as DRFJSONParser


def _has_lone_surrogate(data) -> bool:
    """Whether a string anywhere in ``data`` holds an unpaired surrogate (``"\\ud800"``):
    valid JSON, but not text, so it fails wherever it is encoded (a query, a log line)."""
    todo = [data]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode()
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False


class JSONParser(DRFJSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
        if _has_lone_surrogate(data):
            raise ParseError("JSON parse error - a string holds an unpaired surrogate.")
        return data
