"""Pieces of the /ws/prices fan-out (the stream itself: notifications/tests/test_prices_ws)."""

from markets.consumers import _direct_connection, text_frame


def test_text_frames_carry_the_length_in_the_rfc6455_encoding():
    assert text_frame(b"x") == b"\x81\x01x"
    assert text_frame(b"a" * 125)[:2] == b"\x81\x7d"
    assert text_frame(b"a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"a" * 65535)[:4] == b"\x81\x7e\xff\xff"
    assert text_frame(b"a" * 70000)[:10] == b"\x81\x7f" + (70000).to_bytes(8, "big")
    assert text_frame(b"a" * 70000)[10:] == b"a" * 70000


def test_only_uvicorns_sansio_connection_is_written_directly():
    async def plain_send(message):
        return None

    assert _direct_connection(plain_send) is None
    assert _direct_connection(object()) is None
