/**
 * Trust of the local API, delivered files, credentials and freshness, with real processes: a
 * scheduler, a seed and daemons on 127.0.0.1, `guoce get` as users run it (root and nobody), a local
 * origin with validators (ETag / Last-Modified), private files and content that changes at run time.
 */
import { describe, it, expect, afterEach } from 'vitest'
import { randomBytes } from 'node:crypto'
import { appendFile, chmod, mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises'
import { spawn } from 'node:child_process'
import { createServer, request as httpRequest, type IncomingHttpHeaders } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pieceLayout, sha256, taskIdOf } from '@guoce/content'
import { openStore } from '@guoce/store'
import { fillFromSource, openSource, probeSource } from '@guoce/host'
import { until, sha, startOrigin, startCluster, runGuoce, stopAll, NODE, CLI, type Origin, type OriginInit, type Cluster, type RunResult } from '@guoce/testkit'

const MiB = 1024 * 1024
const cleanups: Array<() => Promise<void>> = []
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {})
  await stopAll()
})

async function setup (o: Omit<OriginInit, 'files'> & { files: Record<string, Buffer>, daemons: number }): Promise<{ origin: Origin, cluster: Cluster, out: string }> {
  const { daemons, ...init } = o
  const origin = await startOrigin(init)
  cleanups.push(async () => { await origin.close() })
  const cluster = await startCluster({ daemons })
  cleanups.push(async () => { await cluster.close() })
  const out = await mkdtemp(join(tmpdir(), 'guoce-out-'))
  cleanups.push(async () => { await rm(out, { recursive: true, force: true }) })
  return { origin, cluster, out }
}



/** a failure as users see it: non-zero exit, one line `guoce: error: ...` matching `pattern` */
function expectOneLineError (r: RunResult, pattern: RegExp): void {
  expect(r.code, r.stderr).not.toBe(0)
  const lines = r.stderr.trim().split('\n')
  expect(lines, r.stderr).toHaveLength(1)
  expect(lines[0]).toMatch(/^guoce: error: /)
  expect(lines[0]).toMatch(pattern)
}

async function get (api: string, url: string, output: string, ...extra: string[]): Promise<RunResult> {
  return await runGuoce(['get', url, '-O', output, '--daemon', api, '--json', ...extra])
}

/** a command as user nobody (uid/gid 65534, no supplementary groups) */
async function asNobody (cmd: string, args: string[]): Promise<RunResult> {
  const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: '/' })
  let stdout = ''; let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const code = await new Promise<number | null>(resolve => child.once('exit', resolve))
  return { code, stdout, stderr }
}

/** `guoce get` as user nobody */
async function getAsNobody (api: string, url: string, output: string, ...extra: string[]): Promise<RunResult> {
  return await asNobody(NODE, [CLI, 'get', url, '-O', output, '--daemon', api, ...extra])
}

/** let other users reach the cluster's stores, as with a daemon whose --data is under a 0755 home */
async function openCluster (cluster: Cluster): Promise<void> {
  await chmod(cluster.dir, 0o755)
  for (const d of cluster.daemons) await chmod(d.data, 0o755)
}

/** an HTTP request with a Host header of our choosing (fetch does not let one set it) */
async function rawRequest (api: string, path: string, o: { method?: string, host?: string, body?: unknown } = {}): Promise<{ status: number, body: string }> {
  const u = new URL(api)
  const payload = o.body != null ? JSON.stringify(o.body) : undefined
  return await new Promise((resolve, reject) => {
    const req = httpRequest({ host: u.hostname, port: u.port, path, method: o.method ?? 'GET', headers: { host: o.host ?? u.host, ...(payload != null ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) } : {}) } }, res => {
      let body = ''
      res.on('data', (d: Buffer) => { body += d.toString() })
      res.on('end', () => { resolve({ status: res.statusCode ?? 0, body }) })
    })
    req.on('error', reject)
    req.end(payload)
  })
}

describe('must-hold 4: a private file stays private', () => {
  it('a user without the credentials, or with ?token=WRONG, gets a one-line error and no file; credentials never reach logs', async () => {
    const prev = process.env.GUOCE_TEST_LOG
    process.env.GUOCE_TEST_LOG = 'debug'
    cleanups.push(async () => { if (prev == null) delete process.env.GUOCE_TEST_LOG; else process.env.GUOCE_TEST_LOG = prev })
    const file = randomBytes(3 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'private.bin': file }, secrets: { 'private.bin': 'good' }, validators: 'etag', daemons: 1 })
    const api = cluster.daemons[0]!.api
    const url = `${origin.url}/private.bin`
    // user A, with the bearer token
    const a = await get(api, url, join(out, 'a'), '--header', 'Authorization: Bearer good')
    expect(a.code, a.stderr).toBe(0)
    expect(sha(await readFile(join(out, 'a')))).toBe(sha(file))
    // user B, same daemon, same URL: no credentials; a wrong token in the query
    expectOneLineError(await get(api, url, join(out, 'b')), /HTTP 401/)
    const wrong = await get(api, `${url}?token=WRONG`, join(out, 'c'))
    expectOneLineError(wrong, /HTTP 401/)
    expect(wrong.stderr).not.toContain('WRONG')
    expect((await readdir(out)).sort()).toEqual(['a'])
    // the same credentials from a file (kept out of argv): the same task
    await writeFile(join(out, '..', `headers-${process.pid}`), '# private\nAuthorization: Bearer good\n', { mode: 0o600 })
    cleanups.push(async () => { await rm(join(out, '..', `headers-${process.pid}`), { force: true }) })
    const f = await get(api, url, join(out, 'a2'), '--header-file', join(out, '..', `headers-${process.pid}`))
    expect(f.code, f.stderr).toBe(0)
    expect(JSON.parse(f.stdout.trim()).taskId).toBe(JSON.parse(a.stdout.trim()).taskId)
    await rm(join(out, 'a2'))
    // another local user, even with the task id and the store reachable: no listing, no data file, no
    // content without the access token, and the origin refuses their get
    await openCluster(cluster)
    const id = JSON.parse(a.stdout.trim()).taskId as string
    const d = cluster.daemons[0]!
    expect((await asNobody('ls', [join(d.data, 'tasks')])).code).not.toBe(0)
    expect((await asNobody('ls', [join(d.data, 'tasks', id.slice(0, 2))])).code).not.toBe(0)
    expect((await asNobody('cat', [join(d.data, 'tasks', id.slice(0, 2), id, 'data')])).code).not.toBe(0)
    expect((await asNobody('cat', [join(d.data, 'tasks', id.slice(0, 2), id, 'meta.json')])).code).not.toBe(0)
    const raw = await rawRequest(api, `/api/v1/tasks/${id}/content`)
    expect(raw.status).toBe(403)
    expect(raw.body).not.toContain(sha(file).slice(0, 8))
    const task = JSON.parse((await rawRequest(api, `/api/v1/tasks/${id}`)).body)
    expect(task.state).toBe('succeeded')
    expect(task.dataFile).toBeUndefined()
    const n = await getAsNobody(api, url, '/tmp/never-written')
    expectOneLineError(n, /HTTP 401/)
    expect(await stat('/tmp/never-written').catch(() => null)).toBeNull()
    // the right token in the query works, as a task of its own
    const q = await get(api, `${url}?token=good`, join(out, 'd'))
    expect(q.code, q.stderr).toBe(0)
    expect(sha(await readFile(join(out, 'd')))).toBe(sha(file))
    expect(JSON.parse(q.stdout.trim()).taskId).not.toBe(JSON.parse(a.stdout.trim()).taskId)
    // no process logged a credential (debug level)
    for (const p of [cluster.scheduler, ...cluster.seeds, ...cluster.daemons]) {
      const log = p.stderr.join('\n')
      expect(log).not.toContain('Bearer good')
      expect(log).not.toContain('token=good')
      expect(log).not.toContain('WRONG')
    }
  })
})

describe('must-hold 6: the local API writes nothing for others and answers only loopback names', () => {
  it('as nobody, a get to a file that user cannot write fails and leaves it unchanged; to its own directory it works, owned by nobody', async () => {
    const file = randomBytes(2 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, validators: 'etag', daemons: 1 })
    const api = cluster.daemons[0]!.api
    const url = `${origin.url}/f.bin`
    // a root-owned 0600 file in a 0700 directory (in a directory nobody may search)
    await chmod(out, 0o755)
    const locked = join(out, 'locked')
    await mkdir(locked, { mode: 0o700 })
    const target = join(locked, 'secret')
    await writeFile(target, 'root only\n', { mode: 0o600 })
    const before = await stat(target)
    const r = await getAsNobody(api, url, target)
    expectOneLineError(r, /cannot write/)
    expect(await readFile(target, 'utf8')).toBe('root only\n')
    const after = await stat(target)
    expect([after.ino, after.uid, after.mode, after.mtimeMs]).toEqual([before.ino, before.uid, before.mode, before.mtimeMs])
    expect(await readdir(locked)).toEqual(['secret'])
    // a directory nobody cannot even reach
    expectOneLineError(await getAsNobody(api, url, join(locked, 'sub', 'x')), /cannot write .*no permission/)
    // where nobody may write, the same get works and the file is nobody's
    const open = join(out, 'open')
    await mkdir(open)
    await chmod(open, 0o777)
    const ok = await getAsNobody(api, url, join(open, 'f.bin'), '--json')
    expect(ok.code, ok.stderr).toBe(0)
    const st = await stat(join(open, 'f.bin'))
    expect(st.uid).toBe(65534)
    expect(sha(await readFile(join(open, 'f.bin')))).toBe(sha(file))
    // the store out of nobody's reach (a 0700 data directory): over HTTP; within reach: a kernel copy, by nobody
    expect(JSON.parse(ok.stdout.trim()).via).toBe('http')
    await openCluster(cluster)
    const copied = await getAsNobody(api, url, join(open, 'g.bin'), '--json')
    expect(copied.code, copied.stderr).toBe(0)
    expect(JSON.parse(copied.stdout.trim()).via).toBe('copy')
    expect((await stat(join(open, 'g.bin'))).uid).toBe(65534)
    expect(sha(await readFile(join(open, 'g.bin')))).toBe(sha(file))
  })

  it('the old export route refuses every path; a foreign Host is refused; --api 0.0.0.0 is refused with one line', async () => {
    const file = randomBytes(1 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, validators: 'etag', daemons: 1 })
    const api = cluster.daemons[0]!.api
    const r = await get(api, `${origin.url}/f.bin`, join(out, 'f.bin'))
    expect(r.code, r.stderr).toBe(0)
    const taskId = JSON.parse(r.stdout.trim()).taskId as string
    const victim = join(out, 'victim')
    await writeFile(victim, 'keep\n', { mode: 0o600 })
    for (const path of [victim, '/etc/guoce-export-test', join(out, 'new'), 'relative']) {
      const res = await rawRequest(api, `/api/v1/tasks/${taskId}/export`, { method: 'POST', body: { path } })
      expect(res.status, path).toBe(410)
      expect(JSON.parse(res.body).error.name).toBe('ForbiddenError')
      const linked = await rawRequest(api, `/api/v1/tasks/${taskId}/export`, { method: 'POST', body: { path, link: true } })
      expect(linked.status).toBe(410)
    }
    expect(await readFile(victim, 'utf8')).toBe('keep\n')
    expect((await readdir(out)).sort()).toEqual(['f.bin', 'victim'])
    // DNS rebinding: a name that resolves to 127.0.0.1 is still not a loopback name
    for (const host of ['evil.example', `evil.example:${new URL(api).port}`, `127.0.0.1.nip.io:${new URL(api).port}`]) {
      const res = await rawRequest(api, `/api/v1/tasks/${taskId}`, { host })
      expect(res.status, host).toBe(403)
      expect(JSON.parse(res.body).error.code).toBe('ERR_FORBIDDEN')
      const post = await rawRequest(api, '/api/v1/tasks', { method: 'POST', host, body: { url: `${origin.url}/f.bin` } })
      expect(post.status).toBe(403)
    }
    expect((await rawRequest(api, `/api/v1/tasks/${taskId}`, { host: `localhost:${new URL(api).port}` })).status).toBe(200)
    // the API only on loopback
    for (const addr of ['0.0.0.0:0', '[::]:0', '10.1.2.3:65001', 'example.com:65001']) {
      expectOneLineError(await runGuoce(['daemon', '--scheduler', cluster.schedulerAddr, '--data', join(out, 'd2'), '--api', addr, '--listen', '/ip4/127.0.0.1/tcp/0']), /--api must be a loopback address/)
    }
  })
})

describe('--api unix:PATH', () => {
  it('listens on a 0600 socket: its user gets through it, nobody cannot use it; a live socket is not taken over', async () => {
    const file = randomBytes(2 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, validators: 'etag', daemons: 0 })
    await chmod(out, 0o777)
    const sock = join(cluster.dir, 'api.sock')
    const d = await cluster.addDaemon(['--api', `unix:${sock}`])
    expect(d.api).toBe(`unix:${sock}`)
    const st = await stat(sock)
    expect(st.isSocket()).toBe(true)
    expect(st.mode & 0o777).toBe(0o600)
    const r = await get(d.api, `${origin.url}/f.bin`, join(out, 'f.bin'))
    expect(r.code, r.stderr).toBe(0)
    expect(JSON.parse(r.stdout.trim()).via).toBe('copy')
    expect(sha(await readFile(join(out, 'f.bin')))).toBe(sha(file))
    const s = await get(d.api, `${origin.url}/f.bin`, join(out, 's.bin'), '--stream')
    expect(s.code, s.stderr).toBe(0)
    expect(sha(await readFile(join(out, 's.bin')))).toBe(sha(file))
    await chmod(cluster.dir, 0o755)
    expectOneLineError(await getAsNobody(d.api, `${origin.url}/f.bin`, join(out, 'n.bin')), /no permission to use the peer daemon/)
    expect(await stat(join(out, 'n.bin')).catch(() => null)).toBeNull()
    // (with the cluster's key where the cluster has one, so that the daemon gets as far as its API)
    const key = (cluster as { clusterKey?: string }).clusterKey
    // (logs at warn: whether its "connected to scheduler" info line comes before the API check fails is a race)
    expectOneLineError(await runGuoce(['daemon', '--scheduler', cluster.schedulerAddr, '--data', join(out, 'd2'), '--api', `unix:${sock}`, '--listen', '/ip4/127.0.0.1/tcp/0', ...(key != null ? ['--cluster-key', key] : [])], { env: { GUOCE_LOG: 'warn' } }), /another process listens there/)
  })
})

describe('must-hold 7: editing a delivered file changes nothing served', () => {
  it('after appending to a delivered file, later gets (default, --copy, --stream) and another daemon get the origin bytes', async () => {
    const file = randomBytes(4 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': file }, validators: 'etag', daemons: 2 })
    const [d0, d1] = cluster.daemons as [Cluster['daemons'][0], Cluster['daemons'][0]]
    const url = `${origin.url}/f.bin`
    const r = await get(d0.api, url, join(out, 'first'))
    expect(r.code, r.stderr).toBe(0)
    const taskId = JSON.parse(r.stdout.trim()).taskId as string
    const dataPath = join(d0.data, 'tasks', taskId.slice(0, 2), taskId, 'data')
    const task = { dataFile: { path: dataPath, ino: (await stat(dataPath)).ino } }
    // the output is a file of its own: not the cache's inode, one link
    const delivered = await stat(join(out, 'first'))
    expect(delivered.nlink).toBe(1)
    expect(delivered.ino).not.toBe(task.dataFile.ino)
    await appendFile(join(out, 'first'), 'edited by the user\n')
    await writeFile(join(out, 'first'), Buffer.alloc(1024), { flag: 'r+' })
    expect(sha(await readFile(task.dataFile.path))).toBe(sha(file))
    for (const [name, extra] of [['default', []], ['copy', ['--copy']], ['stream', ['--stream']]] as const) {
      const again = await get(d0.api, url, join(out, name), ...extra)
      expect(again.code, again.stderr).toBe(0)
      expect(JSON.parse(again.stdout.trim()).via).toBe(name === 'stream' ? 'http' : 'copy')
      expect(sha(await readFile(join(out, name))), name).toBe(sha(file))
    }
    // the seed gone: the first daemon is the one source in the swarm that holds the task
    for (const seed of cluster.seeds) await seed.kill('SIGKILL')
    const other = await get(d1.api, url, join(out, 'other'))
    expect(other.code, other.stderr).toBe(0)
    expect(sha(await readFile(join(out, 'other')))).toBe(sha(file))
    // (every piece from the first daemon while a normal peer's layout is relayed; from the origin once
    // only designated seeds' are: the bytes are the origin's either way)
  })
})

describe('must-hold 8: a changed origin is a new task', () => {
  for (const o of [{ validators: 'etag' }, { validators: 'last-modified', refuseHead: true }] as const) {
    it(`the get after a change returns the new bytes (${o.validators}${'refuseHead' in o ? ', HEAD refused: GET bytes=0-0' : ''})`, async () => {
      const v1 = randomBytes(3 * MiB)
      const v2 = randomBytes(3 * MiB)
      const { origin, cluster, out } = await setup({ files: { 'f.bin': v1 }, ...o, daemons: 1 })
      const api = cluster.daemons[0]!.api
      const url = `${origin.url}/f.bin`
      const a = await get(api, url, join(out, 'a'))
      expect(a.code, a.stderr).toBe(0)
      expect(sha(await readFile(join(out, 'a')))).toBe(sha(v1))
      expect(JSON.parse(a.stdout.trim()).taskId).toBe(taskIdOf({ url, version: origin.version('f.bin') }))
      origin.setFile('f.bin', v2)
      const b = await get(api, url, join(out, 'b'))
      expect(b.code, b.stderr).toBe(0)
      expect(sha(await readFile(join(out, 'b')))).toBe(sha(v2))
      // unchanged again: the cached task is reused (no new origin body)
      const sent = origin.sent['f.bin']!
      const c = await get(api, url, join(out, 'c'))
      expect(c.code, c.stderr).toBe(0)
      expect(sha(await readFile(join(out, 'c')))).toBe(sha(v2))
      expect(origin.sent['f.bin']! - sent).toBeLessThanOrEqual(1)
      if ('refuseHead' in o) expect(origin.methods.HEAD).toBeGreaterThan(0)
    })
  }

  it('a daemon killed mid-download, the origin changed, the daemon restarted: the next get is the new file whole', async () => {
    const v1 = randomBytes(16 * MiB)
    const v2 = randomBytes(16 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': v1 }, validators: 'etag', rate: 4 * MiB, daemons: 1 })
    const d = cluster.daemons[0]!
    const url = `${origin.url}/f.bin`
    const id = taskIdOf({ url, version: origin.version('f.bin') })
    const first = get(d.api, url, join(out, 'f.bin'))
    await until(async () => {
      const p = await (await fetch(`${d.api}/api/v1/tasks/${id}`)).json().catch(() => null) as { piecesDone?: number } | null
      return (p?.piecesDone ?? 0) >= 3
    }, 'first pieces')
    await d.kill('SIGKILL')
    expect((await first).code).not.toBe(0)
    origin.setFile('f.bin', v2)
    origin.setRate(0)
    const again = await cluster.addDaemon([], d.data)
    const r = await get(again.api, url, join(out, 'f.bin'))
    expect(r.code, r.stderr).toBe(0)
    expect(sha(await readFile(join(out, 'f.bin')))).toBe(sha(v2))
    const done = JSON.parse(r.stdout.trim())
    expect(done.taskId).toBe(taskIdOf({ url, version: origin.version('f.bin') }))
    expect(done.piecesFromStore).toBe(0)
    expect((await readdir(out)).filter(f => f.startsWith('.'))).toEqual([])
  })

  it('an origin without validators: its first content is served while cached (documented); a resume never joins two contents', async () => {
    const v1 = randomBytes(2 * MiB)
    const v2 = randomBytes(2 * MiB)
    const { origin, cluster, out } = await setup({ files: { 'f.bin': v1 }, daemons: 1 })
    const api = cluster.daemons[0]!.api
    const url = `${origin.url}/f.bin`
    expect((await get(api, url, join(out, 'a'))).code).toBe(0)
    origin.setFile('f.bin', v2)
    const b = await get(api, url, join(out, 'b'))
    expect(b.code, b.stderr).toBe(0)
    // no validator, no way to see the change: the cached task (version '') is served
    expect(sha(await readFile(join(out, 'b')))).toBe(sha(v1))
    expect(JSON.parse(b.stdout.trim()).taskId).toBe(taskIdOf({ url }))
  })
})

describe('resuming from the origin across a change (fillFromSource, in process)', () => {
  async function partial (origin: Origin, name: string, held: Buffer, version: string): Promise<{ store: Awaited<ReturnType<typeof openStore>>, taskId: string, url: string }> {
    const dir = await mkdtemp(join(tmpdir(), 'guoce-store-'))
    cleanups.push(async () => { await rm(dir, { recursive: true, force: true }) })
    const store = await openStore({ dir })
    cleanups.push(async () => { await store.close() })
    const url = `${origin.url}/${name}`
    const taskId = taskIdOf({ url, version })
    const layout = pieceLayout(held.length)
    const task = await store.create(taskId, { taskId, contentLength: held.length, ...layout }, { url, version })
    // the first piece, held from the old content
    const p0 = held.subarray(0, layout.pieceLength)
    await task.writePiece(0, p0, sha256(p0))
    return { store, taskId, url }
  }

  for (const validators of ['etag', 'last-modified'] as const) {
    it(`Range requests carry If-Range: a changed origin (${validators}) is ContentChangedError and the partial task is dropped`, async () => {
      const v1 = randomBytes(3 * MiB)
      const origin = await startOrigin({ files: { 'f.bin': v1 }, validators })
      cleanups.push(async () => { await origin.close() })
      const version = origin.version('f.bin')
      const { store, taskId, url } = await partial(origin, 'f.bin', v1, version)
      origin.setFile('f.bin', randomBytes(3 * MiB))
      const task = (await store.get(taskId))!
      await expect(fillFromSource({ store, taskId, ref: { url, version }, task })).rejects.toMatchObject({ name: 'ContentChangedError', code: 'ERR_CONTENT_CHANGED' })
      expect(await store.get(taskId)).toBeNull()
      // a whole GET under the old version: If-Match / If-Unmodified-Since -> 412 -> ContentChangedError
      await expect(fillFromSource({ store, taskId, ref: { url, version } })).rejects.toMatchObject({ name: 'ContentChangedError' })
      expect(await store.get(taskId)).toBeNull()
    })
  }

  it('unchanged origin: the resume completes with Range requests and the file is whole', async () => {
    const v1 = randomBytes(3 * MiB)
    const origin = await startOrigin({ files: { 'f.bin': v1 }, validators: 'etag' })
    cleanups.push(async () => { await origin.close() })
    const version = origin.version('f.bin')
    const { store, taskId, url } = await partial(origin, 'f.bin', v1, version)
    const t = await fillFromSource({ store, taskId, ref: { url, version }, task: (await store.get(taskId))! })
    expect(t.complete).toBe(true)
    expect(sha(await t.read(0, v1.length))).toBe(sha(v1))
    expect(origin.sent['f.bin']).toBe(v1.length - MiB)
  })

  it('no validator: a partial task is fetched whole again, and a held piece that changed is ContentChangedError', async () => {
    const v1 = randomBytes(3 * MiB)
    const origin = await startOrigin({ files: { 'f.bin': v1 } })
    cleanups.push(async () => { await origin.close() })
    const { store, taskId, url } = await partial(origin, 'f.bin', v1, '')
    origin.setFile('f.bin', randomBytes(3 * MiB))
    await expect(fillFromSource({ store, taskId, ref: { url }, task: (await store.get(taskId))! })).rejects.toMatchObject({ name: 'ContentChangedError' })
    expect(await store.get(taskId)).toBeNull()
    // only the pieces after the held one changed: a whole new GET, the file is the new content whole
    const { store: s2, taskId: id2 } = await partial(origin, 'f.bin', v1, '')
    const v2 = Buffer.concat([v1.subarray(0, MiB), randomBytes(2 * MiB)])
    origin.setFile('f.bin', v2)
    const t = await fillFromSource({ store: s2, taskId: id2, ref: { url }, task: (await s2.get(id2))! })
    expect(sha(await t.read(0, v2.length))).toBe(sha(v2))
  })
})

describe('credentials and redirects', () => {
  it('credential headers follow a redirect on the same origin only', async () => {
    const seen: IncomingHttpHeaders[] = []
    const other = createServer((req, res) => { seen.push(req.headers); res.writeHead(200, { 'content-length': '2', etag: '"x"' }); res.end(req.method === 'HEAD' ? undefined : 'ok') })
    await new Promise<void>(resolve => other.listen(0, '127.0.0.1', resolve))
    const otherUrl = `http://localhost:${(other.address() as { port: number }).port}/f`
    const first = createServer((req, res) => {
      if (req.url === '/same') { res.writeHead(302, { location: '/final' }); res.end(); return }
      if (req.url === '/final') { seen.push(req.headers); res.writeHead(200, { 'content-length': '2', etag: '"y"' }); res.end(req.method === 'HEAD' ? undefined : 'ok'); return }
      res.writeHead(302, { location: otherUrl }); res.end()
    })
    await new Promise<void>(resolve => first.listen(0, '127.0.0.1', resolve))
    cleanups.push(async () => { other.closeAllConnections(); first.closeAllConnections(); other.close(); first.close() })
    const base = `http://127.0.0.1:${(first.address() as { port: number }).port}`
    const headers = { authorization: 'Bearer good', cookie: 'session=1', 'x-trace': 't' }
    expect((await probeSource({ url: `${base}/away`, headers })).version).toBe('etag:"x"')
    const res = await openSource({ url: `${base}/away`, headers })
    for await (const _ of res.body) { /* drain */ }
    expect(await probeSource({ url: `${base}/same`, headers })).toMatchObject({ version: 'etag:"y"' })
    expect(seen).toHaveLength(3)
    for (const h of seen.slice(0, 2)) {
      expect(h.authorization).toBeUndefined()
      expect(h.cookie).toBeUndefined()
      expect(h['x-trace']).toBe('t')
    }
    expect(seen[2]!.authorization).toBe('Bearer good')
  })
})
