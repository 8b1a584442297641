/**
 * `guoce import FILE` and `guoce export TASKID|sha256:DIGEST -O FILE` (like Dragonfly's dfcache):
 * put a local file into the swarm, named by its sha256, and get it back on any daemon of the cluster.
 * Import is the daemon's own user's: the daemon reads FILE, and asks for the token in its import token
 * file (0600), whose path /healthz names. Export is `guoce get` of the digest-named task (fetchToFile):
 * the daemon checks the whole content against the digest, the output appears only complete.
 */
import { readFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { stat } from 'node:fs/promises'
import { importUrl, parseDigest } from '@guoce/content'
import { InvalidParametersError, NotFoundError, TaskFailedError, type TaskProgress } from '@guoce/interface'
import { api, callerCwd, commandSignal, daemonBase, errorFrom, fetchToFile, fmtBytes } from './get.js'
import { parse, durationMs } from './args.js'

export const IMPORT_USAGE = `Usage: guoce import FILE [--daemon URL] [--json]

  Put FILE into the swarm: the daemon stores it as the task named by its sha256 and serves it to the
  cluster. Prints the digest and the task id (guoce export takes either). Only the daemon's own user
  may import (the daemon reads FILE; it asks for the token in its import token file).
`
export const EXPORT_USAGE = `Usage: guoce export TASKID|sha256:DIGEST -O FILE [--daemon URL] [--timeout 1h] [--stream] [--json]

  Get imported content back through the swarm, on any daemon of the cluster (a TASKID only on a daemon
  that knows the task; a digest anywhere). FILE appears only complete and verified.
`

export async function importCmd (argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, { daemon: { type: 'string' } }, true)
  if (v.help === true) { process.stdout.write(IMPORT_USAGE); return 0 }
  if (positionals.length !== 1) throw new InvalidParametersError('exactly one FILE is required (guoce import FILE)')
  const file = resolve(callerCwd(), positionals[0]!)
  const st = await stat(file).catch((err: NodeJS.ErrnoException) => { throw err.code === 'ENOENT' ? new NotFoundError(`no file ${file}`) : new InvalidParametersError(`cannot read ${file}: ${err.code ?? err.message}`) })
  if (!st.isFile()) throw new InvalidParametersError(`${file} is not a regular file`)
  const base = daemonBase(v.daemon as string | undefined)
  const signal = commandSignal(undefined)
  const health = await api(base, '/healthz', { signal })
  if (health.status !== 200) throw await errorFrom(health)
  const tokenFile = ((await health.json()) as { importTokenFile?: string }).importTokenFile
  if (typeof tokenFile !== 'string') throw new TaskFailedError(`the daemon at ${base} does not take imports`)
  const token = (await readFile(tokenFile, 'utf8').catch((err: NodeJS.ErrnoException) => {
    throw new InvalidParametersError(`cannot read the daemon's import token ${tokenFile} (${err.code ?? err.message}): only the daemon's own user may import`)
  })).trim()
  const started = Date.now()
  const res = await api(base, '/api/v1/import', { method: 'POST', body: { path: file }, signal, headers: { 'x-guoce-import': token } })
  if (res.status !== 200) throw await errorFrom(res)
  const p = await res.json() as TaskProgress & { digest: string }
  const out = { event: 'done', file, digest: p.digest, taskId: p.taskId, bytes: p.contentLength ?? st.size, seconds: (Date.now() - started) / 1000 }
  if (v.json === true) process.stdout.write(JSON.stringify(out) + '\n')
  else process.stdout.write(`${p.digest}\ntask ${p.taskId} (${fmtBytes(out.bytes)})\n`)
  return 0
}

export async function exportCmd (argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, {
    output: { type: 'string', short: 'O' },
    daemon: { type: 'string' },
    timeout: { type: 'string' },
    stream: { type: 'boolean' }
  }, true)
  if (v.help === true) { process.stdout.write(EXPORT_USAGE); return 0 }
  if (positionals.length !== 1) throw new InvalidParametersError('exactly one TASKID or sha256:DIGEST is required (guoce export ID -O FILE)')
  if (typeof v.output !== 'string' || v.output === '') throw new InvalidParametersError('-O FILE is required')
  const id = positionals[0]!
  const base = daemonBase(v.daemon as string | undefined)
  const signal = commandSignal(durationMs(v.timeout as string | undefined, '--timeout'))
  let digest: string
  if (id.startsWith('sha256:')) {
    parseDigest(id)
    digest = id
  } else if (/^[0-9a-f]{64}$/.test(id)) {
    // a task id names content only through the daemon that knows it
    const res = await api(base, `/api/v1/tasks/${id}`, { signal })
    if (res.status === 404) { await res.body?.cancel(); throw new NotFoundError(`no task ${id} on the daemon at ${base}: export it by its sha256:DIGEST (guoce import printed it) on any daemon`) }
    if (res.status !== 200) throw await errorFrom(res)
    const known = (await res.json() as { digest?: string }).digest
    if (known == null) throw new InvalidParametersError(`task ${id} is not named by a digest: get it by its URL (guoce get)`)
    digest = known
  } else {
    throw new InvalidParametersError(`expected a task id (64 hex) or sha256:DIGEST, got "${id}"`)
  }
  const output = resolve(callerCwd(), v.output)
  const dir = dirname(output)
  if ((await stat(dir).catch(() => null))?.isDirectory() !== true) throw new InvalidParametersError(`output directory ${dir} does not exist`)
  const started = Date.now()
  const r = await fetchToFile({ base, url: importUrl(digest), digest, output, signal, bar: v.json !== true, stream: v.stream === true })
  const secs = (Date.now() - started) / 1000
  if (v.json === true) process.stdout.write(JSON.stringify({ event: 'done', digest, output, taskId: r.final.taskId, bytes: r.bytes, via: r.via, seconds: secs, piecesFromStore: r.final.piecesFromStore, piecesFromPeers: r.final.piecesFromPeers, piecesFromSource: r.final.piecesFromSource }) + '\n')
  else process.stderr.write(`${output}: ${fmtBytes(r.bytes)} in ${secs.toFixed(1)} s\n`)
  return 0
}
