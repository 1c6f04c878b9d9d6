/** Auth service entry: env → validated config → listen → SIGTERM drain (the host in common does the last three). */
import { pathToFileURL } from 'node:url';
import { fleetwireVersion, runServices } from '@fleetwire/common';
import { service as authService } from './service.js';

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  runServices([authService], process.env, { version: fleetwireVersion }).catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
