"""{{name}}: a licensed tollgate plugin in Python."""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import licensing


class Service(exports.Service):
    def invoke(self, input: bytes) -> bytes:
        try:
            lease = licensing.acquire("{{license}}")
        except Err as refused:
            raise Err(f"license {{license}} was refused: {refused.value!r}")
        try:
            who = input.decode("utf-8", errors="replace").strip()
            return f"hello, {who}! (from {{name}}, licensed by {{license}})".encode()
        finally:
            licensing.release(lease)
