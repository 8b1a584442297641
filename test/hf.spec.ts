/**
 * `guoce get hf://...`: model repositories from a local hub (test/kit hub.ts: the hub's API paths, LFS
 * files behind a 302 to a second "CDN" server) through real daemons of one cluster.
 */
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest'
import { mkdtemp, readFile, readdir, rm, symlink, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawn } from 'node:child_process'
import { sha, startCluster, startHub, modelFiles, runGuoce, stopAll, until, NODE, CLI, type Cluster, type Hub } from '@guoce/testkit'

let cluster: Cluster
let hub: Hub
const dirs: string[] = []

beforeAll(async () => {
  hub = await startHub()
  cluster = await startCluster({ daemons: 2 })
})
afterAll(async () => {
  await cluster?.close()
  await hub?.close()
  await stopAll()
})
afterEach(async () => {
  for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true })
})

async function outDir (): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'guoce-hf-'))
  dirs.push(d)
  return d
}

async function hf (url: string, out: string, daemon = 0, env: Record<string, string> = {}, extra: string[] = []): Promise<{ code: number | null, stdout: string, stderr: string, lines: any[] }> {
  // the hub from --hf-endpoint, or from HF_ENDPOINT when the test sets it
  const endpoint = env.HF_ENDPOINT != null ? [] : ['--hf-endpoint', hub.url]
  const r = await runGuoce(['get', url, '-O', out, '--daemon', cluster.daemons[daemon]!.api, ...endpoint, '--json', ...extra], { env: { HF_TOKEN: '', HF_ENDPOINT: '', ...env } })
  const lines = r.stdout.trim().split('\n').filter(l => l.startsWith('{')).map(l => JSON.parse(l))
  return { ...r, lines }
}

/** every file under `dir`, as repository paths */
async function tree (dir: string): Promise<string[]> {
  const out: string[] = []
  for (const e of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile()) out.push(join(e.parentPath, e.name).slice(dir.length + 1))
  }
  return out.sort()
}

async function expectSame (dir: string, files: Record<string, Buffer>): Promise<void> {
  expect(await tree(dir)).toEqual(Object.keys(files).sort())
  for (const [p, b] of Object.entries(files)) expect(sha(await readFile(join(dir, p))), p).toBe(sha(b))
}

const fileBytes = (files: Record<string, Buffer>): number => Object.values(files).reduce((a, b) => a + b.length, 0)

describe('guoce get hf://', () => {
  it('a whole repository through two daemons: identical files at their paths; the second comes from the swarm', async () => {
    const files = modelFiles(4)
    hub.addRepo({ id: 'acme/tiny', revisions: { main: files } })
    const a = await outDir()
    const r1 = await hf('hf://acme/tiny', a, 0)
    expect(r1.code, r1.stderr).toBe(0)
    await expectSame(a, files)
    const done1 = r1.lines.at(-1)
    expect(done1).toMatchObject({ event: 'done', files: 5, bytes: fileBytes(files), commit: hub.commit('acme/tiny', 'main') })
    // LFS files are digest-named tasks: the daemon checked them against the hub's sha256
    const fromHub = hub.totalSent()
    expect(fromHub).toBeGreaterThanOrEqual(fileBytes(files))
    const b = await outDir()
    const r2 = await hf('hf://acme/tiny', b, 1)
    expect(r2.code, r2.stderr).toBe(0)
    await expectSame(b, files)
    // the second daemon's files came from the swarm, not the hub
    expect(hub.totalSent() - fromHub).toBe(0)
    const perFile = r2.lines.filter(l => l.event === 'file')
    expect(perFile.reduce((n, l) => n + l.piecesFromSource, 0)).toBe(0)
    expect(perFile.reduce((n, l) => n + l.piecesFromPeers, 0)).toBeGreaterThan(0)
    // no temp files left behind
    expect((await readdir(b, { recursive: true })).filter(n => n.includes('.guoce-'))).toEqual([])
  })

  it('one file by path, a folder, and a revision by name and by commit', async () => {
    const main = modelFiles(1)
    const v1 = { ...main, 'config.json': Buffer.from('{"version": 1}\n') }
    hub.addRepo({ id: 'acme/revs', revisions: { main, v1 } })
    const one = await outDir()
    const r = await hf('hf://acme/revs/onnx/decoder/model.onnx', one, 0, { HF_ENDPOINT: hub.url })
    expect(r.code, r.stderr).toBe(0)
    await expectSame(one, { 'onnx/decoder/model.onnx': main['onnx/decoder/model.onnx']! })
    const folder = await outDir()
    expect((await hf('hf://acme/revs/onnx', folder)).code).toBe(0)
    await expectSame(folder, { 'onnx/decoder/model.onnx': main['onnx/decoder/model.onnx']! })
    const rev = await outDir()
    const rv = await hf('hf://acme/revs/config.json@v1', rev)
    expect(rv.code, rv.stderr).toBe(0)
    await expectSame(rev, { 'config.json': v1['config.json']! })
    const byCommit = await outDir()
    expect((await hf(`hf://acme/revs@${hub.commit('acme/revs', 'v1')}`, byCommit)).code).toBe(0)
    await expectSame(byCommit, v1)
    const missing = await hf('hf://acme/revs/nope.bin', await outDir())
    expect(missing.code).toBe(1)
    expect(missing.stderr).toMatch(/no file or folder "nope.bin"/)
    const noRev = await hf('hf://acme/revs@v9', await outDir())
    expect(noRev.code).toBe(1)
    expect(noRev.stderr).toMatch(/HTTP 404.*no such repository or revision/)
  })

  it('hostile listings are refused with a clear error and write nothing outside DIR', async () => {
    const files = { 'config.json': Buffer.from('{}') }
    hub.addRepo({ id: 'evil/repo', revisions: { main: files } })
    const sha40 = hub.commit('evil/repo', 'main')
    const entry = (rfilename: string, size = 2): Record<string, unknown> => ({ rfilename, size })
    const cases: Array<[unknown, RegExp]> = [
      [{ sha: sha40, siblings: [entry('../escape.txt')] }, /unsafe path "..\/escape.txt"/],
      [{ sha: sha40, siblings: [entry('/etc/passwd')] }, /unsafe path "\/etc\/passwd": absolute/],
      [{ sha: sha40, siblings: [entry('a/\u0000b')] }, /unsafe path .*NUL/],
      [{ sha: sha40, siblings: [entry('a/./b')] }, /unsafe path/],
      [{ sha: sha40, siblings: Array.from({ length: 10_001 }, (_, i) => entry(`f${i}`)) }, /names 10001 files, more than 10000/],
      [{ sha: sha40, siblings: [entry('config.json', -1)] }, /no valid size/],
      [{ sha: sha40, siblings: [entry('config.json', 2 ** 60)] }, /no valid size/],
      [{ sha: sha40, siblings: [{ rfilename: 'w.bin', size: 10, lfs: { sha256: 'a'.repeat(64), size: 11 } }] }, /two sizes/],
      [{ sha: sha40, siblings: [entry('config.json'), entry('config.json')] }, /twice/],
      [{ sha: sha40, siblings: [entry('a'), entry('a/b')] }, /both as a file and as a folder/],
      [{ sha: '../../x', siblings: [] }, /no commit id/],
      [[1, 2, 3], /no commit id/]
    ]
    const parent = await outDir()
    const out = join(parent, 'out')
    for (const [listing, error] of cases) {
      hub.override.set('evil/repo', listing)
      const r = await hf('hf://evil/repo', out)
      expect(r.code, JSON.stringify(listing).slice(0, 100)).toBe(1)
      expect(r.stderr).toMatch(error)
    }
    expect(await readdir(parent)).toEqual(['out'])
    expect(await tree(out)).toEqual([])
    // a size the file does not have: that file fails, nothing lands under its name
    hub.override.set('evil/repo', { sha: sha40, siblings: [entry('config.json', 3)] })
    const r = await hf('hf://evil/repo', out)
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/config.json/)
    expect(r.stderr).toMatch(/3 bytes|2 of 3|ContentLength|bytes/)
    expect(await tree(out)).toEqual([])
    // a git blob id the content does not have
    hub.override.set('evil/repo', { sha: sha40, siblings: [{ rfilename: 'config.json', size: 2, blobId: 'f'.repeat(40) }] })
    const r2 = await hf('hf://evil/repo', out)
    expect(r2.code).toBe(1)
    expect(r2.stderr).toMatch(/does not match the hub's git blob id/)
    expect(await tree(out)).toEqual([])
    // a symlink inside DIR on a file's way out of it
    hub.override.delete('evil/repo')
    hub.addRepo({ id: 'evil/nested', revisions: { main: { 'sub/config.json': Buffer.from('{}') } } })
    await mkdir(join(parent, 'elsewhere'))
    await symlink(join(parent, 'elsewhere'), join(out, 'sub'))
    const r3 = await hf('hf://evil/nested', out)
    expect(r3.code).toBe(1)
    expect(r3.stderr).toMatch(/not a plain directory/)
    expect(await readdir(join(parent, 'elsewhere'))).toEqual([])
  })

  it('a private repository: no token and a wrong token are refused; HF_TOKEN reaches the hub, never the CDN', async () => {
    const files = modelFiles(1)
    hub.addRepo({ id: 'acme/private', revisions: { main: files }, token: 'hf_right' })
    const none = await hf('hf://acme/private', await outDir())
    expect(none.code).toBe(1)
    expect(none.stderr).toMatch(/HTTP 401.*set HF_TOKEN/)
    const wrong = await hf('hf://acme/private', await outDir(), 0, { HF_TOKEN: 'hf_wrong' })
    expect(wrong.code).toBe(1)
    expect(wrong.stderr).toMatch(/HTTP 401.*token in HF_TOKEN is refused/)
    const ok = await outDir()
    const r = await hf('hf://acme/private', ok, 0, { HF_TOKEN: 'hf_right' })
    expect(r.code, r.stderr).toBe(0)
    await expectSame(ok, files)
    expect(hub.cdnAuthorized).toBe(0)
    // the token never shows in output (nor in argv: it is an environment variable)
    expect(r.stdout + r.stderr).not.toContain('hf_right')
  })

  it('a corrupted byte from the CDN fails that file; the others land, no partial file', async () => {
    const files = modelFiles(2)
    hub.addRepo({ id: 'acme/corrupt', revisions: { main: files } })
    hub.corrupt.add(sha(files['model.safetensors']!))
    const out = await outDir()
    const r = await hf('hf://acme/corrupt', out)
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/model.safetensors/)
    expect(r.stderr).toMatch(/1 of 5 files failed/)
    expect(r.stderr).toMatch(/does not match sha256:|digest/i)
    const rest = { ...files }
    delete rest['model.safetensors']
    await expectSame(out, rest)
    // fixed at the CDN: a second run fetches only what is missing
    hub.corrupt.clear()
    const onnx = `cdn:${sha(files['onnx/decoder/model.onnx']!)}`
    const before = hub.sent[onnx]
    const again = await hf('hf://acme/corrupt', out)
    expect(again.code, again.stderr).toBe(0)
    await expectSame(out, files)
    expect(again.lines.at(-1)).toMatchObject({ files: 5, kept: 4 })
    // the files already complete were kept, not fetched again
    expect(hub.sent[onnx]).toBe(before)
  })

  it('interrupted half-way (Ctrl-C): no partial file; a second run completes it', async () => {
    const files = modelFiles(12)
    hub.addRepo({ id: 'acme/resume', revisions: { main: files } })
    const total = fileBytes(files)
    hub.setRate(6 * 1024 * 1024)
    try {
      const out = await outDir()
      const before = hub.totalSent()
      const lfs = `cdn:${sha(files['model.safetensors']!)}`
      const child = spawn(NODE, [CLI, 'get', 'hf://acme/resume', '-O', out, '--daemon', cluster.daemons[0]!.api, '--hf-endpoint', hub.url], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, HF_TOKEN: '' } })
      const exited = new Promise<number | null>(resolve => child.once('exit', code => { resolve(code) }))
      await until(() => (hub.sent[lfs] ?? 0) > total / 3, 'a third of the weights from the hub', 30_000)
      child.kill('SIGINT')
      expect(await exited).not.toBe(0)
      // nothing half-written under DIR: the weights are not there at all, and no temp file is
      expect(await tree(out)).not.toContain('model.safetensors')
      expect((await readdir(out, { recursive: true })).filter(n => n.includes('.guoce-'))).toEqual([])
      const r = await hf('hf://acme/resume', out)
      expect(r.code, r.stderr).toBe(0)
      await expectSame(out, files)
      // the second run resumed where the first stopped: the weights crossed the hub's uplink once (the designated
      // seed's fetch, which went on), not once per attempt, and the daemon never went to the hub itself
      const weights = files['model.safetensors']!
      expect(hub.sent[lfs]).toBeLessThanOrEqual(weights.length + 2)
    } finally {
      hub.setRate(0)
    }
  })
})
