/**
 * `guoce import FILE` / `guoce export ID -O FILE`: a local file into the swarm on one daemon, back out
 * on another (real scheduler, seed and daemons).
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { randomBytes } from 'node:crypto'
import { chmod, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { sha, startCluster, runGuoce, stopAll, NODE, ROOT, type Cluster } from '@guoce/testkit'

let cluster: Cluster
let dir: string

beforeAll(async () => {
  cluster = await startCluster({ daemons: 2 })
  dir = await mkdtemp(join(tmpdir(), 'guoce-import-'))
})
afterAll(async () => {
  await cluster?.close()
  await stopAll()
  if (dir != null) await rm(dir, { recursive: true, force: true })
})

const guoce = async (args: string[]): Promise<{ code: number | null, stdout: string, stderr: string, json: any }> => {
  const r = await runGuoce([...args, '--json'])
  let json: any
  try { json = JSON.parse(r.stdout.trim().split('\n').pop() ?? '') } catch {}
  return { ...r, json }
}

describe('guoce import / export', () => {
  it('a file imported on one daemon is exported byte-identical on the other, by digest and by task id', async () => {
    const file = randomBytes(5 * 1024 * 1024 + 77)
    const src = join(dir, 'model.bin')
    await writeFile(src, file)
    const imp = await guoce(['import', src, '--daemon', cluster.daemons[0]!.api])
    expect(imp.code, imp.stderr).toBe(0)
    expect(imp.json).toMatchObject({ digest: `sha256:${sha(file)}`, bytes: file.length })
    // on the other daemon, by digest: from the importer, through the swarm
    const out = join(dir, 'back.bin')
    const exp = await guoce(['export', imp.json.digest, '-O', out, '--daemon', cluster.daemons[1]!.api])
    expect(exp.code, exp.stderr).toBe(0)
    expect(sha(await readFile(out))).toBe(sha(file))
    expect(exp.json.piecesFromPeers).toBeGreaterThan(0)
    expect(exp.json.piecesFromSource).toBe(0)
    // by task id, on a daemon that knows it
    const out2 = join(dir, 'back2.bin')
    const byId = await guoce(['export', imp.json.taskId, '-O', out2, '--daemon', cluster.daemons[1]!.api])
    expect(byId.code, byId.stderr).toBe(0)
    expect(sha(await readFile(out2))).toBe(sha(file))
    // a third daemon, started after the import, gets it too
    const d3 = await cluster.addDaemon()
    const out3 = join(dir, 'back3.bin')
    const late = await guoce(['export', imp.json.digest, '-O', out3, '--daemon', d3.api])
    expect(late.code, late.stderr).toBe(0)
    expect(sha(await readFile(out3))).toBe(sha(file))
  })

  it('missing content, unknown task ids and bad input fail clearly, with no output file', async () => {
    const out = join(dir, 'missing.bin')
    const missing = await guoce(['export', `sha256:${sha(randomBytes(16))}`, '-O', out, '--daemon', cluster.daemons[1]!.api, '--timeout', '60s'])
    expect(missing.code).toBe(1)
    expect(missing.stderr).toMatch(/no peer holds sha256:/)
    const unknown = await guoce(['export', 'ab'.repeat(32), '-O', out, '--daemon', cluster.daemons[1]!.api])
    expect(unknown.code).toBe(1)
    expect(unknown.stderr).toMatch(/no task abab.* on the daemon/)
    const bad = await guoce(['export', 'nonsense', '-O', out, '--daemon', cluster.daemons[1]!.api])
    expect(bad.code).toBe(1)
    expect(bad.stderr).toMatch(/expected a task id/)
    const noFile = await guoce(['import', join(dir, 'nope'), '--daemon', cluster.daemons[0]!.api])
    expect(noFile.code).toBe(1)
    expect(noFile.stderr).toMatch(/no file/)
    expect((await readdir(dir)).filter(n => n.includes('missing'))).toEqual([])
  })

  it('only the daemon\'s own user may import: the route wants the token of its 0600 file', async () => {
    const api = cluster.daemons[0]!.api
    const health = await (await fetch(`${api}/healthz`)).json() as { importTokenFile: string }
    expect(health.importTokenFile).toBe(join(cluster.daemons[0]!.data, 'import.token'))
    const { stat } = await import('node:fs/promises')
    expect((await stat(health.importTokenFile)).mode & 0o777).toBe(0o600)
    const src = join(dir, 'secret.bin')
    await writeFile(src, 'x')
    await chmod(src, 0o600)
    for (const headers of [{}, { 'x-guoce-import': 'f'.repeat(64) }]) {
      const res = await fetch(`${api}/api/v1/import`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ path: src }) })
      expect(res.status).toBe(403)
      expect(((await res.json()) as any).error.name).toBe('ForbiddenError')
    }
    const token = (await readFile(health.importTokenFile, 'utf8')).trim()
    for (const path of ['/dev/zero', 'relative/path', '/proc/self']) {
      const res = await fetch(`${api}/api/v1/import`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-guoce-import': token }, body: JSON.stringify({ path }) })
      expect(res.status, path).toBe(400)
    }
  })

  it('a hostile holder that vouches for bytes of its own: every piece passes, the whole digest does not; no output', async () => {
    const file = randomBytes(3 * 1024 * 1024 + 5)
    const digest = `sha256:${sha(file)}`
    const evil = spawn(NODE, [join(ROOT, 'test', 'fixtures', 'evil-importer.js'), cluster.schedulerAddr, digest, String(file.length), cluster.clusterKey], { stdio: ['ignore', 'pipe', 'inherit'] })
    const exited = new Promise(resolve => evil.once('exit', resolve))
    try {
      const events: any[] = []
      const ready = new Promise<void>(resolve => createInterface({ input: evil.stdout }).on('line', l => { const e = JSON.parse(l); events.push(e); if (e.event === 'ready') resolve() }))
      await ready
      const out = join(dir, 'evil.bin')
      const r = await guoce(['export', digest, '-O', out, '--daemon', cluster.daemons[0]!.api, '--timeout', '60s'])
      expect(r.code).toBe(1)
      expect(r.stderr).toMatch(/does not match sha256:/)
      // it did serve (the pieces passed their own digests): the whole-content check refused them
      expect(events.some(e => e.event === 'served')).toBe(true)
      expect((await readdir(dir)).filter(n => n.includes('evil'))).toEqual([])
    } finally {
      evil.kill('SIGKILL')
      await exited
    }
  })
})
