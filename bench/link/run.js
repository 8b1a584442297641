// bench/link: one parent to one child on loopback, two Node processes (this one is the child).
//
//   raw_tcp          node:net, parent writes 256 KiB buffers, child counts bytes (the ceiling)
//   noise_stream     one libp2p stream on tcp + noise + yamux (createNode), same writes, child counts bytes
//   piece_stream     the piece path as the peer uses it today: servePieces + PieceConnection on the libp2p
//                    stream (channel 'stream', the default), every piece sha256-verified against known digests
//   piece_secure     the same over a secure data channel (channel 'secure': AES-256-GCM records on direct TCP)
//   piece_integrity  the same over an integrity-only data channel (channel 'integrity': pieces in the clear,
//                    still sha256-verified)
//
// node bench/link/run.js [--gib 1] [--piece-mib 4] [--window 16] [--batch 4] [--runs 3] [--hash sync|async]
// Prints one JSON object; ratios are medians of the runs, each against baselines measured in the same run.
import { fork } from 'node:child_process'
import { createHash, randomFillSync, webcrypto } from 'node:crypto'
import { connect, createServer } from 'node:net'
import { once } from 'node:events'
import { parseArgs } from 'node:util'
import { fileURLToPath } from 'node:url'
import { createNode, servePieces, PieceConnection, Priority, silentLogger } from '@guoce/transfer'
import { multiaddr } from '@multiformats/multiaddr'

const BLAST = '/guoce-bench/blast/1'
const WRITE = 256 * 1024

const { values: opt } = parseArgs({
  options: {
    role: { type: 'string', default: 'child' },
    gib: { type: 'string', default: '1' },
    'piece-mib': { type: 'string', default: '4' },
    window: { type: 'string', default: '16' },
    batch: { type: 'string', default: '4' },
    runs: { type: 'string', default: '3' },
    hash: { type: 'string', default: 'async' },
    modes: { type: 'string', default: 'raw_tcp,noise_stream,piece_stream,piece_secure,piece_integrity' }
  }
})
const PIECE = Number(opt['piece-mib']) * 1024 * 1024
const DISTINCT = 16
const log = (...a) => { process.stderr.write(a.join(' ') + '\n') }

// ---------------------------------------------------------------------------------------------
// parent: serves everything from memory
async function parent () {
  const bufs = Array.from({ length: DISTINCT }, () => randomFillSync(Buffer.allocUnsafe(PIECE)))
  const digests = bufs.map(b => createHash('sha256').update(b).digest())
  const chunk = randomFillSync(Buffer.allocUnsafe(WRITE))

  const tcp = createServer({ noDelay: true }, socket => {
    socket.once('data', async req => {
      let left = Number(req.readBigUInt64BE(0))
      while (left > 0) {
        const n = Math.min(left, WRITE)
        left -= n
        if (!socket.write(n === WRITE ? chunk : chunk.subarray(0, n))) await once(socket, 'drain')
      }
      socket.end()
    })
    socket.on('error', () => {})
  })
  tcp.listen(0, '127.0.0.1')
  await once(tcp, 'listening')

  const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  await node.handle(BLAST, async (stream) => {
    const it = stream[Symbol.asyncIterator]()
    const first = await it.next()
    const req = first.value.subarray()
    let left = Number(Buffer.from(req.buffer, req.byteOffset, 8).readBigUInt64BE(0))
    while (left > 0) {
      const n = Math.min(left, WRITE)
      left -= n
      if (!stream.send(n === WRITE ? chunk : chunk.subarray(0, n))) await stream.onDrain()
    }
    await stream.close()
  })
  const provider = {
    async getPiece (_taskId, n) { return { data: bufs[n % DISTINCT], digest: digests[n % DISTINCT] } }
  }
  await servePieces(node, { provider, log: silentLogger, dataChannel: { integrity: true } })
  process.send({ tcpPort: tcp.address().port, addrs: node.getMultiaddrs().map(String), digests: digests.map(d => d.toString('hex')) })
  process.on('disconnect', () => { process.exit(0) })
}

// ---------------------------------------------------------------------------------------------
// child: measures
async function rawTcp (port, bytes) {
  const t0 = performance.now()
  const socket = connect({ port, host: '127.0.0.1', noDelay: true })
  await once(socket, 'connect')
  const req = Buffer.alloc(8); req.writeBigUInt64BE(BigInt(bytes))
  socket.write(req)
  let got = 0
  for await (const c of socket) got += c.byteLength
  if (got !== bytes) throw new Error(`raw tcp: ${got} of ${bytes}`)
  return performance.now() - t0
}

async function noiseStream (node, addrs, bytes) {
  const t0 = performance.now()
  const stream = await node.dialProtocol(addrs.map(a => multiaddr(a)), BLAST)
  const req = Buffer.alloc(8); req.writeBigUInt64BE(BigInt(bytes))
  stream.send(req)
  let got = 0
  for await (const c of stream) got += c.byteLength
  if (got !== bytes) throw new Error(`noise stream: ${got} of ${bytes}`)
  return performance.now() - t0
}

/** the peer's path (--hash async): pieces arrive without a digest and are hashed on the thread pool */
async function sha256 (data) {
  return Buffer.from(await webcrypto.subtle.digest('SHA-256', data))
}

async function pieces (node, addrs, digests, bytes, channel) {
  const count = Math.ceil(bytes / PIECE)
  const t0 = performance.now()
  const conn = await PieceConnection.open(node, addrs, { channel, hashOnArrival: opt.hash !== 'async' })
  if (conn.channel !== channel) throw new Error(`asked for ${channel}, got ${conn.channel}`)
  const batch = Number(opt.batch); const window = Number(opt.window)
  let next = 0; let verified = 0; let bad = 0
  const hashing = []
  const requests = []
  const onPiece = r => {
    if ('refused' in r) throw new Error(`piece ${r.n} refused: ${r.refused}`)
    // --hash sync: the connection hashed each piece as it arrived (r.digest)
    const check = d => { if (Buffer.from(d).equals(digests[r.n % DISTINCT])) verified++; else bad++; r.release?.() }
    if (r.digest != null) check(r.digest)
    else hashing.push(sha256(r.data).then(check))
  }
  const issue = () => {
    const numbers = []
    while (numbers.length < batch && next < count) numbers.push(next++)
    if (numbers.length === 0) return null
    return conn.request({ taskId: 'bench', numbers, priority: Priority.BACKGROUND }, onPiece).then(() => numbers.length)
  }
  // keep `window` pieces in flight
  for (let i = 0; i < window / batch; i++) { const p = issue(); if (p != null) requests.push(p) }
  while (requests.length > 0) {
    await requests.shift()
    const p = issue(); if (p != null) requests.push(p)
  }
  await Promise.all(hashing)
  conn.close()
  const ms = performance.now() - t0
  if (verified !== count || bad !== 0) throw new Error(`${channel}: ${verified} verified, ${bad} bad of ${count}`)
  return ms
}

async function child () {
  const proc = fork(fileURLToPath(import.meta.url), ['--role', 'parent', '--piece-mib', opt['piece-mib']], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
  const [info] = await once(proc, 'message')
  const digests = info.digests.map(h => Buffer.from(h, 'hex'))
  const node = await createNode({ listen: ['/ip4/127.0.0.1/tcp/0'] })
  const modes = opt.modes.split(',')
  const run = {
    raw_tcp: b => rawTcp(info.tcpPort, b),
    noise_stream: b => noiseStream(node, info.addrs, b),
    piece_stream: b => pieces(node, info.addrs, digests, b, 'stream'),
    piece_secure: b => pieces(node, info.addrs, digests, b, 'secure'),
    piece_integrity: b => pieces(node, info.addrs, digests, b, 'integrity')
  }
  const bytes = Math.round(Number(opt.gib) * 1024 ** 3 / PIECE) * PIECE
  log('warm-up')
  for (const m of modes) await run[m](Math.min(bytes, 128 * 1024 * 1024))
  const runs = []
  for (let r = 0; r < Number(opt.runs); r++) {
    const mbps = {}
    for (const m of modes) {
      const ms = await run[m](bytes)
      mbps[m] = Math.round(bytes / 1e6 / (ms / 1000))
      log(`run ${r} ${m}: ${mbps[m]} MB/s`)
    }
    runs.push(mbps)
  }
  await node.stop()
  proc.disconnect()
  const median = xs => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)] }
  const ratio = (a, b) => runs[0][a] != null && runs[0][b] != null ? +median(runs.map(x => x[a] / x[b])).toFixed(3) : undefined
  const mb = Object.fromEntries(modes.map(m => [m, median(runs.map(x => x[m]))]))
  const ratios = {
    piece_stream_vs_noise: ratio('piece_stream', 'noise_stream'),
    piece_secure_vs_noise: ratio('piece_secure', 'noise_stream'),
    piece_integrity_vs_raw_tcp: ratio('piece_integrity', 'raw_tcp'),
    noise_vs_raw_tcp: ratio('noise_stream', 'raw_tcp')
  }
  console.log(JSON.stringify({
    bench: 'link',
    node: process.version,
    bytes,
    piece_bytes: PIECE,
    window_pieces: Number(opt.window),
    batch: Number(opt.batch),
    hash: opt.hash,
    runs: runs.length,
    mb_per_s: mb,
    ratios,
    targets: {
      secure_piece_path_ge_1_5x_noise: (ratios.piece_secure_vs_noise ?? 0) >= 1.5,
      integrity_ge_0_7x_raw_tcp: (ratios.piece_integrity_vs_raw_tcp ?? 0) >= 0.7
    },
    all_runs: runs
  }))
}

if (opt.role === 'parent') await parent()
else await child()
