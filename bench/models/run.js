// bench/models: a model repository (safetensors weights, config and tokenizer files, a nested LFS file)
// from a local hub whose upload is rate limited: N direct downloads of every file (the way a hub client
// does it: the listing, then each file through /resolve/, LFS files via the 302 to the CDN) vs
// `guoce get hf://` on N daemons of one cluster, side by side in one process tree.
// usage: npm run bench -- models [--mib 64] [--rate-mib 32] [--n 4] [--rounds 1]
import { parseArgs } from 'node:util'
import { createHash } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { request } from 'undici'
import { startHub, modelFiles, startCluster, runGuoce, stopAll } from '@guoce/testkit'

const { values } = parseArgs({ options: { mib: { type: 'string', default: '64' }, 'rate-mib': { type: 'string', default: '32' }, n: { type: 'string', default: '4' }, rounds: { type: 'string', default: '1' } } })
const MiB = 1024 * 1024
const rate = Number(values['rate-mib']) * MiB
const n = Number(values.n)
const log = (m) => process.stderr.write(`[models] ${m}\n`)
const sha = (b) => createHash('sha256').update(b).digest('hex')

/** one client: the listing, then every file at once, redirects followed; sha256 per path */
async function direct (hub, repo) {
  const listing = await (await fetch(`${hub.url}/api/models/${repo}/revision/main?blobs=true`)).json()
  const out = {}
  await Promise.all(listing.siblings.map(async (s) => {
    let url = `${hub.url}/${repo}/resolve/${listing.sha}/${s.rfilename}`
    let res = await request(url)
    if (res.statusCode === 302) { await res.body.dump(); url = res.headers.location; res = await request(url) }
    const h = createHash('sha256')
    for await (const c of res.body) h.update(c)
    out[s.rfilename] = h.digest('hex')
  }))
  return out
}

const runs = []
const out = await mkdtemp(join(tmpdir(), 'guoce-bench-models-'))
try {
  for (let round = 0; round < Number(values.rounds); round++) {
    const files = modelFiles(Number(values.mib))
    const want = Object.fromEntries(Object.entries(files).map(([p, b]) => [p, sha(b)]))
    const total = Object.values(files).reduce((a, b) => a + b.length, 0)
    // the same bytes under two repository names; the daemons' caches start empty, the direct clients
    // keep nothing: neither run warms the other
    const hub = await startHub({ repos: [{ id: 'bench/direct', revisions: { main: files } }, { id: 'bench/p2p', revisions: { main: files } }], rate })
    const cluster = await startCluster({ daemons: n })
    try {
      log(`round ${round}: ${n} direct downloads of a ${(total / MiB).toFixed(1)} MiB repository at ${values['rate-mib']} MiB/s hub upload`)
      let before = hub.totalSent()
      let t0 = performance.now()
      const got = await Promise.all(Array.from({ length: n }, () => direct(hub, 'bench/direct')))
      const directS = (performance.now() - t0) / 1000
      const directBytes = hub.totalSent() - before
      for (const g of got) for (const [p, h] of Object.entries(want)) if (g[p] !== h) throw new Error(`direct download of ${p} corrupted`)
      log(`round ${round}: ${n} x guoce get hf://`)
      before = hub.totalSent()
      t0 = performance.now()
      const results = await Promise.all(cluster.daemons.map((d, i) => runGuoce(['get', 'hf://bench/p2p', '-O', join(out, `r${round}-${i}`), '--daemon', d.api, '--hf-endpoint', hub.url, '--json'], { env: { HF_TOKEN: '' } })))
      const p2pS = (performance.now() - t0) / 1000
      const p2pBytes = hub.totalSent() - before
      for (const r of results) if (r.code !== 0) throw new Error(`guoce get hf:// failed: ${r.stderr}`)
      for (let i = 0; i < n; i++) for (const [p, h] of Object.entries(want)) if (sha(await readFile(join(out, `r${round}-${i}`, p))) !== h) throw new Error(`p2p copy of ${p} corrupted`)
      runs.push({
        n,
        files: Object.keys(files).length,
        repo_bytes: total,
        hub_rate_bytes_per_s: rate,
        direct_s: +directS.toFixed(3),
        p2p_s: +p2pS.toFixed(3),
        speedup: +(directS / p2pS).toFixed(3),
        hub_bytes_ratio_direct: +(directBytes / total).toFixed(4),
        hub_bytes_ratio_p2p: +(p2pBytes / total).toFixed(4)
      })
    } finally {
      await cluster.close()
      await hub.close()
    }
  }
} finally {
  await stopAll()
  await rm(out, { recursive: true, force: true })
}
process.stdout.write(JSON.stringify({ bench: 'models', runs }) + '\n')
