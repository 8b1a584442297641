// bench/get4: `guoce get` of one file on N daemons at once vs N direct downloads of it, side by side,
// from the same origin whose upload is rate limited (the origin's uplink is what P2P saves).
// usage: npm run bench -- get4 [--mib 64] [--rate-mib 32] [--n 4] [--rounds 1] [--piece-channel stream|secure|integrity]
import { parseArgs } from 'node:util'
import { randomBytes, createHash } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { startOrigin, startCluster, runGuoce, stopAll } from '@guoce/testkit'

const { values } = parseArgs({ options: { mib: { type: 'string', default: '64' }, 'rate-mib': { type: 'string', default: '32' }, n: { type: 'string', default: '4' }, rounds: { type: 'string', default: '1' }, 'piece-channel': { type: 'string', default: 'secure' } } })
const MiB = 1024 * 1024
const F = Number(values.mib) * MiB
const rate = Number(values['rate-mib']) * MiB
const n = Number(values.n)
const log = (m) => process.stderr.write(`[get4] ${m}\n`)

async function direct (url) {
  const res = await request(url)
  const h = createHash('sha256')
  for await (const c of res.body) h.update(c)
  return h.digest('hex')
}

const runs = []
const out = await mkdtemp(join(tmpdir(), 'guoce-bench-get4-'))
try {
  for (let round = 0; round < Number(values.rounds); round++) {
    const file = randomBytes(F)
    const want = createHash('sha256').update(file).digest('hex')
    const origin = await startOrigin({ files: { 'direct.bin': file, 'p2p.bin': file }, rate })
    const channelArgs = ['--piece-channel', values['piece-channel']]
    const cluster = await startCluster({ daemons: n, seedArgs: channelArgs, daemonArgs: channelArgs })
    try {
      log(`round ${round}: ${n} direct downloads of ${values.mib} MiB at ${values['rate-mib']} MiB/s origin upload`)
      let t0 = performance.now()
      const hashes = await Promise.all(Array.from({ length: n }, () => direct(`${origin.url}/direct.bin`)))
      const directS = (performance.now() - t0) / 1000
      if (hashes.some(h => h !== want)) throw new Error('direct download corrupted')
      log(`round ${round}: ${n} x guoce get`)
      t0 = performance.now()
      const results = await Promise.all(cluster.daemons.map((d, i) => runGuoce(['get', `${origin.url}/p2p.bin`, '-O', join(out, `f${i}`), '--daemon', d.api, '--json'])))
      const p2pS = (performance.now() - t0) / 1000
      for (const r of results) if (r.code !== 0) throw new Error(`guoce get failed: ${r.stderr}`)
      for (let i = 0; i < n; i++) if (createHash('sha256').update(await readFile(join(out, `f${i}`))).digest('hex') !== want) throw new Error('p2p copy corrupted')
      runs.push({
        n,
        piece_channel: values['piece-channel'],
        file_bytes: F,
        origin_rate_bytes_per_s: rate,
        direct_s: +directS.toFixed(3),
        p2p_s: +p2pS.toFixed(3),
        speedup: +(directS / p2pS).toFixed(3),
        origin_bytes_ratio_direct: +(origin.sent['direct.bin'] / F).toFixed(4),
        origin_bytes_ratio_p2p: +(origin.sent['p2p.bin'] / F).toFixed(4)
      })
    } finally {
      await cluster.close()
      await origin.close()
    }
  }
} finally {
  await stopAll()
  await rm(out, { recursive: true, force: true })
}
process.stdout.write(JSON.stringify({ bench: 'get4', runs }) + '\n')
