// bench/read's origin, run by run.js inside its own network namespace:
//   node origin.js HOST BLOCK_FILE SIZE
// Serves `big.bin`: SIZE bytes made as run.js makes them (the 1 MiB block in BLOCK_FILE repeated, every
// 4 KiB stamped with its offset), with ETag validators and Range. Prints {"url"} when ready; answers every
// "stats" line on stdin with {"sent": bytes of bodies sent so far}.
import { readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { startOrigin } from '@guoce/testkit'
import { stampedFrom } from './stamped.js'

const [host, blockFile, size] = process.argv.slice(2)
const body = stampedFrom(readFileSync(blockFile), Number(size))
const origin = await startOrigin({ files: { 'big.bin': body }, host, validators: 'etag' })
process.stdout.write(JSON.stringify({ url: `${origin.url}/big.bin` }) + '\n')
createInterface({ input: process.stdin }).on('line', (l) => {
  if (l.trim() === 'stats') process.stdout.write(JSON.stringify({ sent: origin.totalSent() }) + '\n')
}).on('close', () => { void origin.close().finally(() => process.exit(0)) })
