// {{name}}: a licensed tollgate plugin in JavaScript.
import { acquire, release } from 'tollgate:plugin/licensing@0.1.0';

export const service = {
  // A thrown string becomes the call's error.
  invoke(input) {
    let lease;
    try {
      lease = acquire('{{license}}');
    } catch (err) {
      throw `license {{license}} was refused: ${JSON.stringify(err && err.payload)}`;
    }
    try {
      const who = new TextDecoder().decode(input).trim();
      return new TextEncoder().encode(`hello, ${who}! (from {{name}}, licensed by {{license}})`);
    } finally {
      release(lease);
    }
  },
};
