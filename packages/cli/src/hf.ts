/**
 * `guoce get hf://ORG/REPO[/PATH][@REVISION] -O DIR`: a model repository of a Hugging Face hub (or one
 * file, or one folder of it) through the swarm. The hub's listing (`GET /api/models/{repo}/revision/{rev}
 * ?blobs=true`) names the revision's commit, every file's path and size, and for LFS files their sha256;
 * each file is then one `guoce get` task of `{endpoint}/{repo}/resolve/{commit}/{path}` (an immutable
 * URL: the commit, not the branch), keyed by that sha256 where the hub gives one, so the daemon checks
 * the whole file against it and every peer holding it can serve it. Files without LFS are checked here
 * against the hub's git blob id (sha1 of "blob SIZE\0" + bytes) before they land.
 *
 * Every listing is hostile: bounded in bytes and entries before use; a path with `..`, `.`, empty
 * segments, a leading `/`, a backslash, control characters or NUL is refused, and so is a directory
 * on the way that is not a plain directory (a symlink out of DIR). Each file lands through a temp file +
 * rename (fetchToFile); a failed file fails the command, files already complete stay.
 *
 * HF_TOKEN goes as `Authorization: Bearer` to the hub only: in the listing request, and in the daemon's
 * request headers for a private or gated repository (the origin's credential: dropped on the redirect to
 * the CDN, kept off peers and out of logs, doc/SECURITY.md). Public repositories are fetched without it, so
 * every user of the swarm shares their tasks.
 */
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { lstat, mkdir, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { InvalidParametersError, OriginStatusError, TaskFailedError, defineError } from '@guoce/interface'
import { callerCwd, commandSignal, daemonBase, fetchToFile, fmtBytes } from './get.js'
import { parse, durationMs, count, isLoopbackHost } from './args.js'

/** The hub's listing is unusable: too large, malformed, or naming a path that is not safe. */
export const HubListingError = defineError('HubListingError', 'ERR_HUB_LISTING')

/**
 * Largest listing read from the hub, in bytes.
 * @default 16 MiB
 */
export const HF_MAX_LISTING_BYTES = 16 * 1024 * 1024
/**
 * Most files in one listing.
 * @default 10000
 */
export const HF_MAX_FILES = 10_000
/**
 * Longest file path in a listing, in bytes (one segment: 255).
 * @default 1024
 */
export const HF_MAX_PATH_BYTES = 1024
/**
 * Largest file a listing may name (MAX_CONTENT_BYTES of the transfer layer).
 * @default 16 TiB
 */
export const HF_MAX_FILE_BYTES = 16 * 1024 ** 4
/**
 * Files fetched at once.
 * @default 8
 */
export const HF_CONCURRENCY = 8
/**
 * Time allowed for the listing request.
 * @default 60 s
 */
export const HF_LISTING_TIMEOUT_MS = 60_000

export const HF_USAGE = `Usage: guoce get hf://ORG/REPO[/PATH][@REVISION] -O DIR [--hf-endpoint URL] [--daemon URL] [--concurrency N]
                 [--timeout 1h] [--stream] [--json]

  A model repository of a Hugging Face hub through the swarm: every file (or PATH: one file, or every
  file under a folder) lands at its repository path under DIR, each one complete and verified (LFS files
  against the hub's sha256, others against its git blob id). REVISION: a branch, tag or commit (default main).
  -O, --output DIR     where the files go (created if missing)
  --hf-endpoint URL    the hub (default $HF_ENDPOINT or https://huggingface.co)
  --concurrency N      files fetched at once (default ${HF_CONCURRENCY})
  HF_TOKEN (environment) is sent as a bearer token to the hub only (never to the CDN, to peers or in argv).
`

export interface HfRef { repo: string, path: string, revision: string }

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/
const REVISION = /^[A-Za-z0-9._/-]{1,256}$/

/** hf://ORG/REPO[/PATH][@REVISION] */
export function parseHfUrl (s: string): HfRef {
  if (!s.startsWith('hf://')) throw new InvalidParametersError(`not an hf:// URL: "${s}"`)
  let rest = s.slice(5)
  let revision = 'main'
  // the last @ (a revision may hold slashes: refs/pr/1)
  const at = rest.lastIndexOf('@')
  if (at >= 0) {
    revision = rest.slice(at + 1)
    rest = rest.slice(0, at)
  }
  const parts = rest.split('/')
  const [org, name, ...path] = parts
  if (org == null || name == null || !NAME.test(org) || !NAME.test(name)) throw new InvalidParametersError(`hf:// URL must be hf://ORG/REPO[/PATH][@REVISION], got "${s}"`)
  if (!REVISION.test(revision) || revision.split('/').some(p => p === '' || p === '.' || p === '..')) throw new InvalidParametersError(`bad revision "${revision}" in "${s}"`)
  const p = path.join('/').replace(/\/+$/, '')
  if (p !== '') checkPath(p, InvalidParametersError)
  return { repo: `${org}/${name}`, path: p, revision }
}

/** A repository path that stays under DIR once joined to it; else `Err`. */
export function checkPath (p: string, Err: new (m: string) => Error = HubListingError): void {
  const shown = JSON.stringify(p.slice(0, 200))
  if (p === '' || Buffer.byteLength(p) > HF_MAX_PATH_BYTES) throw new Err(`unsafe path ${shown}: empty or longer than ${HF_MAX_PATH_BYTES} bytes`)
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f\\]/.test(p)) throw new Err(`unsafe path ${shown}: NUL, control characters or a backslash`)
  if (p.startsWith('/')) throw new Err(`unsafe path ${shown}: absolute`)
  for (const seg of p.split('/')) {
    if (seg === '' || seg === '.' || seg === '..') throw new Err(`unsafe path ${shown}: empty, "." or ".." segment`)
    if (Buffer.byteLength(seg) > 255) throw new Err(`unsafe path ${shown}: a segment longer than 255 bytes`)
  }
}

export interface HubFile { path: string, size: number, sha256?: string, blobId?: string }
export interface HubListing { commit: string, gated: boolean, private: boolean, files: HubFile[] }

const isSize = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 && n <= HF_MAX_FILE_BYTES

/** Check a listing's JSON (hostile) and keep what is used. */
export function checkListing (j: unknown): HubListing {
  if (j == null || typeof j !== 'object') throw new HubListingError('hub listing is not a JSON object')
  const o = j as { sha?: unknown, private?: unknown, gated?: unknown, siblings?: unknown }
  if (typeof o.sha !== 'string' || !/^[0-9a-f]{40}$/.test(o.sha)) throw new HubListingError('hub listing has no commit id (sha: 40 hex)')
  if (!Array.isArray(o.siblings)) throw new HubListingError('hub listing has no file list (siblings)')
  if (o.siblings.length > HF_MAX_FILES) throw new HubListingError(`hub listing names ${o.siblings.length} files, more than ${HF_MAX_FILES}`)
  const seen = new Set<string>()
  const files: HubFile[] = []
  for (const e of o.siblings as unknown[]) {
    const f = e as { rfilename?: unknown, size?: unknown, blobId?: unknown, lfs?: { sha256?: unknown, size?: unknown } | null }
    if (f == null || typeof f !== 'object' || typeof f.rfilename !== 'string') throw new HubListingError('hub listing has an entry without a file name (rfilename)')
    checkPath(f.rfilename)
    if (seen.has(f.rfilename)) throw new HubListingError(`hub listing names ${JSON.stringify(f.rfilename)} twice`)
    seen.add(f.rfilename)
    if (!isSize(f.size)) throw new HubListingError(`hub listing gives ${JSON.stringify(f.rfilename)} no valid size (0..${HF_MAX_FILE_BYTES}; ?blobs=true)`)
    const file: HubFile = { path: f.rfilename, size: f.size }
    if (f.lfs != null) {
      if (typeof f.lfs !== 'object' || typeof f.lfs.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(f.lfs.sha256)) throw new HubListingError(`hub listing gives ${JSON.stringify(f.rfilename)} an LFS entry without a sha256`)
      if (f.lfs.size !== f.size) throw new HubListingError(`hub listing gives ${JSON.stringify(f.rfilename)} two sizes (${String(f.size)} and LFS ${String(f.lfs.size)})`)
      file.sha256 = f.lfs.sha256
    } else if (f.blobId != null) {
      if (typeof f.blobId !== 'string' || !/^[0-9a-f]{40}$/.test(f.blobId)) throw new HubListingError(`hub listing gives ${JSON.stringify(f.rfilename)} a bad blobId`)
      file.blobId = f.blobId
    }
    files.push(file)
  }
  // a file and a folder of the same name cannot both land
  for (const p of seen) {
    const segs = p.split('/')
    for (let i = 1; i < segs.length; i++) {
      const dir = segs.slice(0, i).join('/')
      if (seen.has(dir)) throw new HubListingError(`hub listing names ${JSON.stringify(dir)} both as a file and as a folder`)
    }
  }
  return { commit: o.sha, private: o.private === true, gated: o.gated != null && o.gated !== false, files }
}

function encodePath (p: string): string { return p.split('/').map(encodeURIComponent).join('/') }

/** GET the listing, bounded in time and bytes; the hub's refusals named. */
export async function fetchListing (endpoint: string, ref: HfRef, token: string | undefined, signal: AbortSignal): Promise<HubListing> {
  const url = `${endpoint}/api/models/${ref.repo}/revision/${encodeURIComponent(ref.revision)}?blobs=true`
  let res: Response
  try {
    res = await fetch(url, { headers: token != null ? { authorization: `Bearer ${token}` } : {}, signal: AbortSignal.any([signal, AbortSignal.timeout(HF_LISTING_TIMEOUT_MS)]), redirect: 'error' })
  } catch (err) {
    if (signal.aborted) throw err
    throw new TaskFailedError(`cannot reach the hub at ${endpoint}: ${(err as { cause?: Error }).cause?.message ?? (err as Error).message}`)
  }
  if (res.status !== 200) {
    await res.body?.cancel()
    const why = res.status === 401 || res.status === 403
      ? (token != null ? 'the token in HF_TOKEN is refused' : 'a private or gated repository: set HF_TOKEN')
      : res.status === 404 ? 'no such repository or revision' : 'listing failed'
    throw new OriginStatusError(res.status, `hub answered HTTP ${res.status} for ${ref.repo}@${ref.revision}: ${why}`)
  }
  const cl = res.headers.get('content-length')
  if (cl != null && Number(cl) > HF_MAX_LISTING_BYTES) { await res.body?.cancel(); throw new HubListingError(`hub listing of ${cl} bytes, more than ${HF_MAX_LISTING_BYTES}`) }
  const chunks: Uint8Array[] = []
  let n = 0
  for await (const c of res.body ?? []) {
    n += c.byteLength
    if (n > HF_MAX_LISTING_BYTES) { await res.body?.cancel().catch(() => {}); throw new HubListingError(`hub listing longer than ${HF_MAX_LISTING_BYTES} bytes`) }
    chunks.push(c)
  }
  let j: unknown
  try { j = JSON.parse(Buffer.concat(chunks).toString('utf8')) } catch { throw new HubListingError('hub listing is not JSON') }
  return checkListing(j)
}

/** The files of `listing` that `path` names: all, the file itself, or those under the folder. */
export function select (listing: HubListing, path: string): HubFile[] {
  if (path === '') return listing.files
  const one = listing.files.find(f => f.path === path)
  if (one != null) return [one]
  const under = listing.files.filter(f => f.path.startsWith(path + '/'))
  if (under.length === 0) throw new InvalidParametersError(`no file or folder "${path}" in that revision`)
  return under
}

/** mkdir -p under `root`, refusing anything on the way that is not a plain directory (a symlink out of it). */
async function makeParents (root: string, path: string): Promise<void> {
  const segs = path.split('/').slice(0, -1)
  let dir = root
  for (const seg of segs) {
    dir = join(dir, seg)
    const st = await lstat(dir).catch(() => null)
    if (st == null) {
      await mkdir(dir, { mode: 0o755 }).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'EEXIST') throw err })
      if ((await lstat(dir)).isDirectory()) continue
    } else if (st.isDirectory()) continue
    throw new HubListingError(`${dir} is in the way of ${path}: not a plain directory (a symlink or a file)`)
  }
}

async function hashFile (file: string, algo: 'sha1' | 'sha256', prefix?: string): Promise<string> {
  const h = createHash(algo)
  if (prefix != null) h.update(prefix)
  for await (const c of createReadStream(file)) h.update(c as Buffer)
  return h.digest('hex')
}

/** The landed file is the one the listing names: size, and the git blob id when there is no sha256. */
async function checkFile (file: HubFile, at: string): Promise<void> {
  const size = (await stat(at)).size
  if (size !== file.size) throw new HubListingError(`${file.path}: the hub listed ${file.size} bytes, the file has ${size}`)
  if (file.sha256 == null && file.blobId != null) {
    const got = await hashFile(at, 'sha1', `blob ${size}\0`)
    if (got !== file.blobId) throw new HubListingError(`${file.path}: content does not match the hub's git blob id ${file.blobId}`)
  }
}

/** Already here, complete and matching: kept (a second run resumes with the files still missing). */
async function alreadyHere (file: HubFile, at: string): Promise<boolean> {
  const st = await lstat(at).catch(() => null)
  if (st?.isFile() !== true || st.size !== file.size) return false
  if (file.sha256 != null) return await hashFile(at, 'sha256') === file.sha256
  if (file.blobId != null) return await hashFile(at, 'sha1', `blob ${file.size}\0`) === file.blobId
  return false
}

/** One file of a repository or artifact, as landFiles fetches it. */
export interface LandFile {
  /** path under DIR (checked with checkPath) */
  path: string
  size: number
  url: string
  digest?: string
  headers?: Record<string, string>
  /** already at `at`, complete and matching: kept */
  here?: (at: string) => Promise<boolean>
  /** the temp file is the listed one (throws to refuse it) */
  verify?: (tmp: string) => Promise<void>
}

/**
 * Fetch `files` through the daemon into `dir`, `concurrency` at once, each at its path (parents made one by
 * one, plain directories only) through fetchToFile's temp file + rename. A failed file is reported and the
 * others go on; then the whole fails, naming the count (files already complete stay).
 */
export async function landFiles (dir: string, files: LandFile[], o: { base: string, signal: AbortSignal, json: boolean, concurrency: number, stream: boolean }): Promise<{ bytes: number, kept: number }> {
  const failures: Array<{ path: string, error: Error }> = []
  let bytes = 0; let kept = 0
  const queue = [...files]
  const worker = async (): Promise<void> => {
    for (let file = queue.shift(); file != null; file = queue.shift()) {
      const output = join(dir, ...file.path.split('/'))
      try {
        checkPath(file.path)
        await makeParents(dir, file.path)
        if (file.here != null && await file.here(output)) {
          kept++
          if (o.json) process.stdout.write(JSON.stringify({ event: 'file', path: file.path, bytes: file.size, kept: true }) + '\n')
          continue
        }
        const r = await fetchToFile({ base: o.base, url: file.url, ...(file.headers != null ? { headers: file.headers } : {}), ...(file.digest != null ? { digest: file.digest } : {}), output, signal: o.signal, stream: o.stream, ...(file.verify != null ? { verify: file.verify } : {}) })
        bytes += r.bytes
        if (o.json) process.stdout.write(JSON.stringify({ event: 'file', path: file.path, bytes: r.bytes, taskId: r.final.taskId, via: r.via, piecesFromStore: r.final.piecesFromStore, piecesFromPeers: r.final.piecesFromPeers, piecesFromSource: r.final.piecesFromSource }) + '\n')
        else process.stderr.write(`${file.path}: ${fmtBytes(r.bytes)}\n`)
      } catch (err) {
        if (o.signal.aborted) throw err
        failures.push({ path: file.path, error: err as Error })
        process.stderr.write(`guoce: ${file.path}: ${(err as Error).message}\n`)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(o.concurrency, files.length) }, worker))
  if (failures.length > 0) {
    const first = failures[0]!
    throw new TaskFailedError(`${failures.length} of ${files.length} files failed (first: ${first.path}: ${first.error.message}); ${files.length - failures.length} complete under ${dir}`)
  }
  return { bytes, kept }
}

/** `--concurrency`, `--daemon`, `--timeout`, `-O DIR` (made if missing): what hf:// and oci:// share. */
export async function manyFileOptions (v: Record<string, unknown>): Promise<{ concurrency: number, base: string, signal: AbortSignal, dir: string }> {
  if (typeof v.output !== 'string' || v.output === '') throw new InvalidParametersError('-O DIR is required')
  const concurrency = count(v.concurrency as string | undefined, '--concurrency') ?? HF_CONCURRENCY
  if (concurrency > 64) throw new InvalidParametersError('--concurrency is at most 64')
  const base = daemonBase(v.daemon as string | undefined)
  const signal = commandSignal(durationMs(v.timeout as string | undefined, '--timeout'))
  const dir = resolve(callerCwd(), v.output)
  await mkdir(dir, { recursive: true }).catch((err: NodeJS.ErrnoException) => { throw new InvalidParametersError(`cannot create ${dir}: ${err.code ?? err.message}`) })
  return { concurrency, base, signal, dir }
}

export async function getHf (argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, {
    output: { type: 'string', short: 'O' },
    daemon: { type: 'string' },
    'hf-endpoint': { type: 'string' },
    concurrency: { type: 'string' },
    timeout: { type: 'string' },
    stream: { type: 'boolean' }
  }, true)
  if (v.help === true) { process.stdout.write(HF_USAGE); return 0 }
  if (positionals.length !== 1) throw new InvalidParametersError('exactly one hf:// URL is required (guoce get hf://ORG/REPO -O DIR)')
  const ref = parseHfUrl(positionals[0]!)
  const json = v.json === true
  const fromEnv = process.env.HF_ENDPOINT != null && process.env.HF_ENDPOINT !== '' ? process.env.HF_ENDPOINT : undefined
  const endpoint = ((v['hf-endpoint'] as string | undefined) ?? fromEnv ?? 'https://huggingface.co').replace(/\/+$/, '')
  let ep: URL
  try { ep = new URL(endpoint) } catch { throw new InvalidParametersError(`--hf-endpoint must be a URL, got "${endpoint}"`) }
  if (ep.protocol !== 'https:' && ep.protocol !== 'http:') throw new InvalidParametersError('--hf-endpoint must be http(s)')
  const token = process.env.HF_TOKEN != null && process.env.HF_TOKEN !== '' ? process.env.HF_TOKEN : undefined
  if (token != null && ep.protocol === 'http:' && !isLoopbackHost(ep.hostname)) throw new InvalidParametersError(`HF_TOKEN is not sent in clear text to ${ep.host}: use an https:// hub`)
  const { concurrency, base, signal, dir } = await manyFileOptions(v)

  const started = Date.now()
  const listing = await fetchListing(endpoint, ref, token, signal)
  const files = select(listing, ref.path)
  const headers = token != null && (listing.private || listing.gated) ? { authorization: `Bearer ${token}` } : undefined
  const { bytes, kept } = await landFiles(dir, files.map(file => ({
    path: file.path,
    size: file.size,
    url: `${endpoint}/${ref.repo}/resolve/${listing.commit}/${encodePath(file.path)}`,
    ...(file.sha256 != null ? { digest: `sha256:${file.sha256}` } : {}),
    ...(headers != null ? { headers } : {}),
    here: async (at) => await alreadyHere(file, at),
    verify: async (tmp) => { await checkFile(file, tmp) }
  })), { base, signal, json, concurrency, stream: v.stream === true })
  const secs = (Date.now() - started) / 1000
  if (json) process.stdout.write(JSON.stringify({ event: 'done', repo: ref.repo, revision: ref.revision, commit: listing.commit, output: dir, files: files.length, kept, bytes, seconds: secs }) + '\n')
  else process.stderr.write(`${ref.repo}@${listing.commit.slice(0, 12)}: ${files.length} files, ${fmtBytes(bytes)} in ${secs.toFixed(1)} s\n`)
  return 0
}
