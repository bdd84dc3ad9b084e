// Example plugin in JavaScript: asks the host for each license it may use,
// works on its input, then sends every license back explicitly with `release`.
//
// Built with componentize-js against ../../../wit (world `service-offer`); see
// guest-examples/build-other-languages.sh.

import { licenseIds, acquire, release } from 'tollgate:plugin/licensing@0.1.0';

// A refused `acquire` throws; the `license-error` case travels as `payload`
// (`{ tag: 'exhausted' }` and so on). Returns its WIT case name.
function refusal(err) {
  const why = err && typeof err === 'object' && 'payload' in err ? err.payload : err;
  if (why && typeof why === 'object' && typeof why.tag === 'string') {
    return why.tag;
  }
  return String(why);
}

export const service = {
  // Throwing from an export whose WIT result is `result<_, string>` returns
  // the thrown string as the error.
  invoke(input) {
    const leases = [];
    try {
      for (const id of licenseIds()) {
        let lease;
        try {
          lease = acquire(id);
        } catch (err) {
          throw `license ${id} was refused: ${refusal(err)}`;
        }
        leases.push(lease);
      }
      const name = new TextDecoder().decode(input).trim();
      const held = leases.map((lease) => lease.licenseId()).join(', ');
      return new TextEncoder().encode(`hello from js, ${name}! (licensed by ${held})`);
    } finally {
      while (leases.length > 0) {
        release(leases.pop());
      }
    }
  },
};
