// Bundles an ES module entry of tests/interop/web into one browser script
// with esbuild (from npm):  node bundle.mjs <entry> <outfile>
import * as esbuild from 'esbuild';

const [entry, outfile] = process.argv.slice(2);
await esbuild.build({
  entryPoints: [entry],
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: ['chrome120'],
  outfile,
  logLevel: 'warning',
});
process.stdout.write(JSON.stringify({ outfile }) + '\n');
