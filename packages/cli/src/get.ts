/**
 * `guoce get URL -O FILE`: asks a peer daemon to fetch URL through the swarm, follows its progress
 * (a bar on a TTY), then writes FILE itself, as the calling user, through a temp file in FILE's
 * directory + fsync + rename, so FILE appears only complete and verified. With a daemon on this host
 * whose data file this user may read, the bytes are a kernel copy of it (reflink where the filesystem
 * shares extents, else copy_file_range); else they come over the daemon's HTTP API. FILE never shares
 * bytes with the daemon's cache: writing into it changes nothing the daemon serves.
 */
import { constants as fsConstants } from 'node:fs'
import { access, chmod, copyFile, open, readFile, rename, rm, stat } from 'node:fs/promises'
import { basename, dirname, join, resolve } from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { parseSourceUrl, parseDigest, redactUrl } from '@guoce/content'
import { unixFetch, ContentChangedError, DigestMismatchError, InvalidParametersError, NoSpaceError, TaskFailedError, ContentLengthMismatchError, fromErrorInfo, type TaskProgress } from '@guoce/interface'
import { parse, durationMs, isLoopbackHost } from './args.js'

export const GET_USAGE = `Usage: guoce get URL -O FILE [--daemon http://HOST:PORT] [--digest sha256:HEX] [--header K:V]... [--header-file FILE]
                 [--timeout 1h] [--stream] [--seed-from OLD [--delta-source swarm|origin]] [--json]
       guoce get hf://ORG/REPO[/PATH][@REVISION] -O DIR ...   (a model repository: guoce get hf:// --help)

  -O, --output FILE    where the file goes; it appears only when complete and verified
  --daemon URL         peer daemon API: http://HOST:PORT or unix:/PATH (default $GUOCE_DAEMON or http://127.0.0.1:65001)
  --digest DIGEST      expected sha256 of the whole file; also makes the task id content-addressed
  --header K:V         request header for the origin (repeatable)
  --header-file FILE   request headers, one K:V a line: credentials stay out of the command line
  --timeout DURATION   give up after this long (default: none)
  --seed-from OLD      a delta update: fetch URL.gcidx (made by \`guoce index\`), copy the chunks it lists that
                       OLD holds and fetch only the others (ranged reads through the swarm); a missing or bad
                       index is said on stderr and the whole file is downloaded instead
  --delta-source S     swarm (default: the index and the missing ranges through the daemon, rounded up to whole
                       pieces) or origin (both straight from the origin: exact chunk ranges, no swarm)
  --stream             bytes through the daemon's HTTP API even when it runs on this host
  --copy               accepted for compatibility: FILE is always a file of its own (a kernel copy of the
                       daemon's data file when it runs on this host and this user may read it, else over
                       HTTP); writing into FILE never changes the daemon's cache
`

export function fmtBytes (n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let i = 0
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++ }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${u[i]}`
}

// the built-in fetch: no HTTP client to load at start-up
export async function api (base: string, path: string, init: { method?: string, body?: unknown, signal?: AbortSignal | undefined, access?: string, headers?: Record<string, string> } = {}): Promise<Response> {
  const req = {
    method: init.method ?? 'GET',
    headers: { ...(init.body != null ? { 'content-type': 'application/json' } : {}), ...(init.access != null ? { 'x-guoce-access': init.access } : {}), ...init.headers },
    body: init.body != null ? JSON.stringify(init.body) : null,
    ...(init.signal != null ? { signal: init.signal } : {})
  }
  try {
    return base.startsWith('unix:') ? await unixFetch(base.slice(5), path, req) : await fetch(new URL(path, base), req)
  } catch (err) {
    if ((err as Error).name === 'AbortError' || (err as Error).name === 'TimeoutError' || init.signal?.aborted === true) {
      throw new TaskFailedError(init.signal?.reason instanceof Error && init.signal.reason.name !== 'TimeoutError' ? init.signal.reason.message : 'timed out (--timeout)')
    }
    const cause = (err as { cause?: { code?: string, message?: string } }).cause
    if (cause?.code === 'ECONNREFUSED' || (cause?.code === 'ENOENT' && base.startsWith('unix:'))) throw new TaskFailedError(`no peer daemon at ${base} (start one with "guoce up" or "guoce daemon")`)
    if (cause?.code === 'EACCES') throw new TaskFailedError(`no permission to use the peer daemon at ${base}`)
    throw new TaskFailedError(`cannot reach the peer daemon at ${base}: ${cause?.message ?? (err as Error).message}`)
  }
}

async function * body (res: Response): AsyncGenerator<Uint8Array> {
  if (res.body == null) return
  for await (const chunk of res.body) yield chunk
}

export async function errorFrom (res: Response): Promise<Error> {
  const text = await res.text()
  try {
    const e = (JSON.parse(text) as { error: { name: string, code: string, message: string } }).error
    return fromErrorInfo(e)
  } catch {
    return new TaskFailedError(`daemon answered HTTP ${res.status}: ${text.slice(0, 200)}`)
  }
}

/** `--daemon`, else $GUOCE_DAEMON, else the default API address; checked. */
export function daemonBase (given: string | undefined): string {
  const base = given ?? process.env.GUOCE_DAEMON ?? 'http://127.0.0.1:65001'
  if (!/^unix:\/./.test(base)) {
    try { new URL(base) } catch { throw new InvalidParametersError(`--daemon must be a URL like http://127.0.0.1:65001 or unix:/PATH, got "${base}"`) }
  }
  return base
}

/** Aborted by Ctrl-C or SIGTERM (so temp files are removed on the way out) and by the timeout. */
export function commandSignal (timeoutMs: number | undefined): AbortSignal {
  const interrupted = new AbortController()
  const onSignal = (sig: NodeJS.Signals): void => { interrupted.abort(new TaskFailedError(`interrupted by ${sig}`)) }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  return timeoutMs != null ? AbortSignal.any([interrupted.signal, AbortSignal.timeout(timeoutMs)]) : interrupted.signal
}

/** The caller's working directory: under `npm run guoce -- ...` npm runs us from the checkout's root. */
export function callerCwd (): string {
  return process.env.npm_lifecycle_event === 'guoce' ? (process.env.INIT_CWD ?? process.cwd()) : process.cwd()
}

export async function get (argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, {
    output: { type: 'string', short: 'O' },
    daemon: { type: 'string' },
    digest: { type: 'string' },
    header: { type: 'string', multiple: true },
    'header-file': { type: 'string' },
    timeout: { type: 'string' },
    stream: { type: 'boolean' },
    copy: { type: 'boolean' },
    'seed-from': { type: 'string' },
    'delta-source': { type: 'string' }
  }, true)
  if (v.help === true) { process.stdout.write(GET_USAGE); return 0 }
  const json = v.json === true
  if (positionals.length !== 1) throw new InvalidParametersError('exactly one URL is required (guoce get URL -O FILE)')
  const url = positionals[0]!
  parseSourceUrl(url)
  if (typeof v.output !== 'string' || v.output === '') throw new InvalidParametersError('-O FILE is required')
  const digest = v.digest as string | undefined
  if (digest != null) parseDigest(digest)
  const headers: Record<string, string> = {}
  const given = [...((v.header as string[] | undefined) ?? [])]
  if (typeof v['header-file'] === 'string') {
    // credentials kept out of argv (which every local user can read in /proc)
    const text = await readFile(v['header-file'], 'utf8').catch((err: NodeJS.ErrnoException) => { throw new InvalidParametersError(`cannot read --header-file ${v['header-file'] as string}: ${err.code ?? err.message}`) })
    for (const line of text.split(/\r?\n/)) if (line.trim() !== '' && !line.trimStart().startsWith('#')) given.push(line)
  }
  for (const h of given) {
    const i = h.indexOf(':')
    if (i <= 0) throw new InvalidParametersError(`--header must be K:V, got "${h}"`)
    headers[h.slice(0, i).trim().toLowerCase()] = h.slice(i + 1).trim()
  }
  const base = daemonBase(v.daemon as string | undefined)
  const signal = commandSignal(durationMs(v.timeout as string | undefined, '--timeout'))
  const output = resolve(callerCwd(), v.output)
  const dir = dirname(output)
  const st = await stat(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'EACCES') throw new InvalidParametersError(`cannot write ${output}: no permission to reach ${dir}`)
    return null
  })
  if (st?.isDirectory() !== true) throw new InvalidParametersError(`output directory ${dir} does not exist`)
  // FILE is written by this process, as this user: say so before any download if it cannot be
  await access(dir, fsConstants.W_OK | fsConstants.X_OK).catch(() => { throw new InvalidParametersError(`cannot write ${output}: no write permission on ${dir}`) })

  const started = Date.now()
  const deltaSource = (v['delta-source'] as string | undefined) ?? 'swarm'
  if (deltaSource !== 'swarm' && deltaSource !== 'origin') throw new InvalidParametersError(`--delta-source must be swarm or origin, got "${deltaSource}"`)
  if (typeof v['seed-from'] === 'string') {
    const d = await (await import('./delta.js')).deltaGet({ via: deltaSource, base, url, headers, ...(digest != null ? { digest } : {}), output, old: v['seed-from'], signal })
    if (d !== null) {
      const secs = (Date.now() - started) / 1000
      const summary = { event: 'done', url: redactUrl(url), output, ...(d.taskId !== undefined ? { taskId: d.taskId } : {}), bytes: d.size, via: 'delta', seconds: secs, delta: d }
      if (json) process.stdout.write(JSON.stringify(summary) + '\n')
      else process.stderr.write(`${basename(output)}: ${fmtBytes(d.size)} in ${secs.toFixed(1)} s; ${d.reusedChunks} of ${d.chunks} chunks from ${v['seed-from']}, ${fmtBytes(d.fetchBytes)} of chunks fetched (${fmtBytes(d.pieceBytes)} fetched ${d.via === 'swarm' ? 'in whole pieces' : 'from the origin'})\n`)
      return 0
    }
  }
  const { final, bytes, via } = await fetchToFile({ base, url, headers, ...(digest != null ? { digest } : {}), output, signal, bar: !json, stream: v.stream === true })
  const secs = (Date.now() - started) / 1000
  const summary = { event: 'done', url: redactUrl(url), output, taskId: final.taskId, bytes, via, seconds: secs, piecesFromStore: final.piecesFromStore, piecesFromPeers: final.piecesFromPeers, piecesFromSource: final.piecesFromSource }
  if (json) process.stdout.write(JSON.stringify(summary) + '\n')
  else process.stderr.write(`${basename(output)}: ${fmtBytes(bytes)} in ${secs.toFixed(1)} s\n`)
  return 0
}

export interface FetchInit {
  /** the daemon's API: http://HOST:PORT or unix:PATH */
  base: string
  url: string
  /** request headers for the origin (credentials stay in the daemon's request, never in argv or on peers) */
  headers?: Record<string, string>
  digest?: string
  output: string
  signal: AbortSignal
  /** a progress bar on a TTY */
  bar?: boolean
  /** bytes over HTTP even when the daemon runs on this host */
  stream?: boolean
  /** a last check of the complete temp file before it is renamed onto `output` (throws to refuse it) */
  verify?: (tmp: string) => Promise<void>
}

/**
 * One file through the peer daemon: start (or join) the task, follow it to its end, then write
 * `output` through a temp file + fsync + rename, so `output` appears only complete and verified.
 */
export async function fetchToFile (o: FetchInit): Promise<{ final: TaskProgress, bytes: number, via: 'copy' | 'http' }> {
  const { base, url, digest, output, signal } = o
  const headers = o.headers ?? {}
  let final: TaskProgress
  let token: string | undefined
  try {
    // the origin changed while the task ran (ContentChangedError): the daemon dropped it; one more
    // try asks the origin again and fetches the new content under its new version
    for (let attempt = 1; ; attempt++) {
      const res = await api(base, '/api/v1/tasks', { method: 'POST', body: { url, ...(Object.keys(headers).length > 0 ? { headers } : {}), ...(digest != null ? { digest } : {}) }, signal })
      if (res.status !== 200) throw await errorFrom(res)
      const first = await res.json() as TaskProgress & { access?: string }
      token = first.access
      final = await follow(base, first.taskId, o.bar !== true, signal)
      if (final.state === 'succeeded') break
      const err = final.error != null ? fromErrorInfo(final.error) : new TaskFailedError(`download ended in state ${final.state}`)
      if (err.name !== ContentChangedError.name || attempt >= 2) throw err
    }
    // a daemon on this host: a kernel copy of its data file when this user may read it; elsewhere, with
    // --stream, or when the file is not readable, bytes come over HTTP
    const local = o.stream !== true && isLoopback(base) ? await copyLocal(base, final, token, output, digest, signal, o.verify) : null
    const via = local != null ? 'copy' : 'http'
    const bytes = local ?? await copyOut(base, final, token, output, digest, signal, o.verify)
    return { final, bytes, via }
  } catch (err) {
    // an abort can surface anywhere in a body read; say why, in one line
    if (signal.aborted) throw new TaskFailedError(signal.reason instanceof Error && signal.reason.name !== 'TimeoutError' ? signal.reason.message : 'timed out (--timeout)')
    throw err
  }
}

async function follow (base: string, taskId: string, json: boolean, signal?: AbortSignal): Promise<TaskProgress> {
  const res = await api(base, `/api/v1/tasks/${taskId}/progress`, { signal })
  if (res.status !== 200) throw await errorFrom(res)
  const tty = !json && process.stderr.isTTY === true
  let last: TaskProgress | undefined
  let buf = ''
  const t0 = Date.now()
  const dec = new TextDecoder()
  for await (const chunk of body(res)) {
    buf += dec.decode(chunk, { stream: true })
    let i: number
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i); buf = buf.slice(i + 1)
      if (line.trim() === '') continue
      last = JSON.parse(line) as TaskProgress
      if (tty && last.contentLength != null) {
        const frac = last.contentLength === 0 ? 1 : last.bytesDone / last.contentLength
        const width = 30
        const bar = '#'.repeat(Math.round(frac * width)).padEnd(width, '.')
        const rate = last.bytesDone / Math.max(0.001, (Date.now() - t0) / 1000)
        process.stderr.write(`\r[${bar}] ${(frac * 100).toFixed(1).padStart(5)}%  ${fmtBytes(last.bytesDone)}/${fmtBytes(last.contentLength)}  ${fmtBytes(rate)}/s `)
      }
    }
  }
  if (tty) process.stderr.write('\n')
  if (last == null || (last.state !== 'succeeded' && last.state !== 'failed')) throw new TaskFailedError('the daemon closed the progress stream before the task ended')
  return last
}

function isLoopback (base: string): boolean {
  return base.startsWith('unix:') || isLoopbackHost(new URL(base).hostname)
}

export function tempFor (output: string): string {
  return join(dirname(output), `.${basename(output)}.guoce-${randomBytes(4).toString('hex')}`)
}

function writeError (err: unknown, output: string): Error {
  const code = (err as NodeJS.ErrnoException).code
  if (code === 'ENOSPC' || code === 'EDQUOT') return new NoSpaceError(`no space left on device writing ${output}`)
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') return new InvalidParametersError(`cannot write ${output}: ${code}`)
  return err as Error
}

/** rename() is durable once the directory entry is */
async function syncDir (dir: string): Promise<void> {
  const d = await open(dir, 'r')
  try { await d.sync() } finally { await d.close() }
}

interface DataFile { path: string, size: number, ino: number }

/**
 * Same host: a kernel copy of the daemon's verified data file into a temp file of ours (reflink or
 * copy_file_range), its size checked (the daemon checked the digest), fsynced, renamed onto `output`.
 * null when this user cannot read that file, or it is not the daemon's (another mount namespace): then
 * the caller streams it over HTTP.
 */
async function copyLocal (base: string, p: TaskProgress, token: string | undefined, output: string, digest: string | undefined, signal?: AbortSignal, verify?: (tmp: string) => Promise<void>): Promise<number | null> {
  const res = await api(base, `/api/v1/tasks/${p.taskId}`, { signal, ...(token != null ? { access: token } : {}) })
  if (res.status !== 200) { await res.body?.cancel(); return null }
  const file = ((await res.json()) as { dataFile?: DataFile }).dataFile
  if (file == null || typeof file.path !== 'string') return null
  const src = await stat(file.path).catch(() => null)
  if (src?.ino !== file.ino || src.size !== file.size || src.size !== p.contentLength) return null
  if (!await access(file.path, fsConstants.R_OK).then(() => true, () => false)) return null
  const tmp = tempFor(output)
  let ok = false
  try {
    // the mode a file of this user gets here (umask): copyFile would give it the cache file's mode
    let mode: number
    try {
      const fh = await open(tmp, 'wx', 0o644)
      mode = (await fh.stat()).mode & 0o7777
      await fh.close()
      await rm(tmp)
    } catch (err) { throw writeError(err, output) }
    try {
      // O_EXCL on the copy too: never through a name someone else put there meanwhile (a symlink)
      await copyFile(file.path, tmp, fsConstants.COPYFILE_FICLONE | fsConstants.COPYFILE_EXCL)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      if (code === 'EACCES' || code === 'EPERM' || code === 'ENOENT') return null
      throw writeError(err, output)
    }
    await chmod(tmp, mode)
    const fh = await open(tmp, 'r+')
    try {
      const size = (await fh.stat()).size
      if (size !== file.size) throw new ContentLengthMismatchError(`copied ${size} of ${file.size} bytes`)
      // with --digest the task is named by it, and the daemon checked the whole content against it before
      // it reported success (PeerTask.succeed): the copy of that same file (inode and size checked) is not
      // hashed a second time here (bench/fanout: 0.25 CPU-s per 128 MiB get on a CPU-bound swarm)
      if (verify != null) await verify(tmp)
      await fh.sync()
    } finally { await fh.close() }
    await rename(tmp, output)
    await syncDir(dirname(output))
    ok = true
    return file.size
  } catch (err) {
    throw writeError(err, output)
  } finally {
    if (!ok) await rm(tmp, { force: true })
  }
}

async function copyOut (base: string, p: TaskProgress, token: string | undefined, output: string, digest: string | undefined, signal?: AbortSignal, verify?: (tmp: string) => Promise<void>): Promise<number> {
  const tmp = tempFor(output)
  const fh = await open(tmp, 'wx', 0o644).catch((err: unknown) => { throw writeError(err, output) })
  let ok = false
  try {
    const res = await api(base, `/api/v1/tasks/${p.taskId}/content`, { signal, ...(token != null ? { access: token } : {}) })
    if (res.status !== 200) throw await errorFrom(res)
    const h = createHash('sha256')
    let n = 0
    for await (const chunk of body(res)) {
      h.update(chunk)
      let off = 0
      while (off < chunk.byteLength) {
        const { bytesWritten } = await fh.write(chunk, off, chunk.byteLength - off)
        off += bytesWritten
      }
      n += chunk.byteLength
    }
    if (p.contentLength != null && n !== p.contentLength) throw new ContentLengthMismatchError(`daemon sent ${n} of ${p.contentLength} bytes`)
    if (digest != null && `sha256:${h.digest('hex')}` !== digest) throw new DigestMismatchError(`downloaded content does not match ${digest}`)
    if (verify != null) await verify(tmp)
    await fh.sync()
    await fh.close()
    await rename(tmp, output)
    await syncDir(dirname(output))
    ok = true
    return n
  } catch (err) {
    throw writeError(err, output)
  } finally {
    if (!ok) {
      await fh.close().catch(() => {})
      await rm(tmp, { force: true })
    }
  }
}
