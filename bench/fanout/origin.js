// The fan-out benchmark's origin, run inside its own network namespace by run.js:
//   node origin.js HOST BYTES [FILE]
// Serves one random file of BYTES under any name `*.bin` (each name counted separately, so the swarm
// run and the direct baseline of each N are told apart). Prints {"url","digest"} when ready; answers
// every "stats" line on stdin with {"sent": {name: bytes}}. With FILE, the same bytes are also written
// there first (the BitTorrent comparison seeds that file from this namespace).
import { randomBytes, createHash } from 'node:crypto'
import { createInterface } from 'node:readline'
import { writeFileSync } from 'node:fs'
import { startOrigin } from '@guoce/testkit'

const [host, size, file] = process.argv.slice(2)
const body = randomBytes(Number(size))
if (file != null) writeFileSync(file, body)
const digest = `sha256:${createHash('sha256').update(body).digest('hex')}`
const files = new Proxy({}, { get: (_t, k) => typeof k === 'string' && k.endsWith('.bin') ? body : undefined })
const origin = await startOrigin({ files, host, rate: 0 })
process.stdout.write(JSON.stringify({ url: origin.url, digest }) + '\n')
createInterface({ input: process.stdin }).on('line', (l) => {
  if (l.trim() === 'stats') process.stdout.write(JSON.stringify({ sent: origin.sent }) + '\n')
}).on('close', () => { void origin.close().finally(() => process.exit(0)) })
