"""Example plugin in Python: asks the host for each license it may use, works
on its input, then sends every license back explicitly with `release`.

Built with componentize-py against ../../../wit (world `service-offer`); see
guest-examples/build-other-languages.sh.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import licensing

# WIT case names of `license-error`, keyed by the generated class.
_REFUSALS = {
    licensing.LicenseError_UnknownLicense: "unknown-license",
    licensing.LicenseError_Exhausted: "exhausted",
    licensing.LicenseError_Expired: "expired",
    licensing.LicenseError_NotEntitled: "not-entitled",
    licensing.LicenseError_TimedOut: "timed-out",
    licensing.LicenseError_Revoked: "revoked",
}


class Service(exports.Service):
    def invoke(self, input: bytes) -> bytes:
        leases = []
        try:
            for license_id in licensing.license_ids():
                try:
                    leases.append(licensing.acquire(license_id))
                except Err as refused:
                    why = _REFUSALS.get(type(refused.value), repr(refused.value))
                    raise Err(f"license {license_id} was refused: {why}")
            name = input.decode("utf-8", errors="replace").strip()
            held = ", ".join(lease.license_id() for lease in leases)
            return f"hello from python, {name}! (licensed by {held})".encode()
        finally:
            while leases:
                licensing.release(leases.pop())
