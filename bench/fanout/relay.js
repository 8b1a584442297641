// The fan-out benchmark's floor: one hop of the cheapest chain a Node process can run, started by run.js
// inside a peer's (or the seed's) namespace:
//   node relay.js FROM LISTEN_HOST LISTEN_PORT OUT BYTES DIGEST [--tail]
// FROM is the origin's URL (the chain's head) or HOST:PORT of the previous relay. The relay listens for
// its one successor, and once that successor is connected (at once with --tail) it reads FROM and, per
// chunk as it arrives, hashes it, writes it to OUT and forwards it (pausing its source while the
// successor's socket is full). No pieces, no scheduler, no per-piece protocol: every byte crosses every
// link once in the order a perfect pipeline would move it. At the end it fsyncs OUT, checks size and
// sha256, and prints {"done": true, "bytes": N}. Prints {"ready": true} once listening; starts on "go\n".
import { createServer, connect } from 'node:net'
import { get } from 'node:http'
import { createHash } from 'node:crypto'
import { openSync, writeSync, fsyncSync, closeSync } from 'node:fs'
import { createInterface } from 'node:readline'

const [from, host, port, out, size, digest, tail] = process.argv.slice(2)
const BYTES = Number(size)
let successor = null
const haveSuccessor = tail === '--tail'
  ? Promise.resolve()
  : new Promise(resolve => {
    const server = createServer({ noDelay: true }, s => { successor = s; server.close(); resolve() })
    server.listen(Number(port), host, () => { process.stdout.write('{"ready":true}\n') })
  })
if (tail === '--tail') process.stdout.write('{"ready":true}\n')

function fail (msg) { process.stderr.write(`relay: ${msg}\n`); process.exit(1) }

async function source () {
  if (from.startsWith('http://')) {
    return await new Promise((resolve, reject) => {
      get(from, res => { if (res.statusCode !== 200) reject(new Error(`origin ${res.statusCode}`)); else resolve(res) }).on('error', reject)
    })
  }
  const [h, p] = from.split(':')
  const s = connect({ host: h, port: Number(p), noDelay: true })
  await new Promise((resolve, reject) => { s.once('connect', resolve); s.once('error', reject) })
  return s
}

createInterface({ input: process.stdin }).once('line', () => { void run().catch(err => fail(err.message)) })

async function run () {
  await haveSuccessor
  const fd = openSync(out, 'w')
  const hash = createHash('sha256')
  let got = 0
  let chunks = 0
  const src = await source()
  src.on('data', chunk => {
    got += chunk.byteLength
    chunks++
    hash.update(chunk)
    writeSync(fd, chunk)
    if (successor != null && !successor.write(chunk)) {
      src.pause()
      successor.once('drain', () => src.resume())
    }
  })
  await new Promise((resolve, reject) => { src.once('end', resolve); src.once('error', reject) })
  fsyncSync(fd); closeSync(fd)
  if (got !== BYTES) fail(`got ${got} bytes, want ${BYTES}`)
  if (`sha256:${hash.digest('hex')}` !== digest) fail('digest mismatch')
  if (successor != null) await new Promise(resolve => successor.end(resolve))
  process.stdout.write(JSON.stringify({ done: true, bytes: got, chunks }) + '\n')
  process.exit(0)
}
