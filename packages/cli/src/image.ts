/**
 * `guoce image convert | inspect | check | mount | umount`: thin wiring over @guoce/image and @guoce/lazy-mount.
 */
import { spawn } from 'node:child_process'
import { mkdir, open, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { InvalidParametersError } from '@guoce/interface'
import { parse, sizeBytes, defaultHome, durationMs } from './args.js'

const USAGE = `Usage: guoce image <convert|inspect|check|mount|pull|umount> ...

  guoce image convert --source REF --target REF [--chunk-size 1MiB] [--chunk-dict REF]... [--compression zstd|none]
                      [--compression-level 3] [--prefetch-trace FILE] [--plain-http] [--json]
      turn an OCI image into a chunk-deduplicated lazy image (EROFS metadata layers + blobs of zstd-compressed chunks);
      --prefetch-trace stores a trace recorded by \`guoce image mount --record-trace\` in it (oci: targets),
      with the short chunks of the files it read packed together
      REF is oci:DIR[:TAG] (OCI image layout) or docker://REGISTRY/REPO[:TAG][@sha256:DIGEST] (registry;
      http for 127.0.0.1/localhost, https otherwise, --plain-http forces http; token/basic auth with
      credentials from GUOCE_REGISTRY_AUTH=user:pass)
  guoce image inspect oci:DIR[:TAG] [--files] [--json]
      layers, files, chunks and dedup figures of a converted image
  guoce image check oci:DIR[:TAG] [--json]
      verify every metadata structure and every chunk digest; exits non-zero on the first fault, naming it
  guoce image mount REF DIR [--detach] [--mode erofs|fuse] [--daemon http://127.0.0.1:65001] [--state DIR] [--chunks DIR]
                    [--chunk-quota 10GiB] [--fetch-timeout 30s] [--read-timeout 60s] [--record-trace FILE] [--no-prefetch]
                    [--digest sha256:HEX] [--index-digest sha256:HEX] [--plain-http] [--whole-blobs] [--json]
      show the image's whole tree at DIR at once; chunks are fetched as they are read (kernel EROFS over
      blobs served by FUSE from this process, layers stacked with overlayfs), verified, and kept in the
      node chunk store (--chunks, default $GUOCE_HOME/chunks). REF is oci:DIR[:TAG], or
      docker://REGISTRY/REPO:TAG with chunks through the peer daemon's swarm (--daemon), or a plain EROFS
      OS image file: erofs+http(s)://HOST/PATH/os.erofs, its chunk index (guoce index) published beside it
      as os.erofs.gcidx; the image file is served by FUSE from ranged reads through the daemon, each
      chunk checked against the index before it is served, and mounted file-backed (--digest sha256:..
      of the image must match the index; --index-digest sha256:.. pins the index itself).
      --mode fuse serves the metadata by FUSE too (kernels without file-backed EROFS). --record-trace
      writes the order of first chunk reads, and the file chunks read, to FILE at unmount (in fuse mode
      unless --mode erofs: the kernel reads ahead on a blob file past the files it needs, and those
      neighbours would be listed as read); an image with a stored trace is
      prefetched in that order in the background, below on-demand reads (--no-prefetch: not).
      --plain-http: the registry over http whatever its host. The daemon fetches only the pieces of a
      blob that are read; --whole-blobs: a blob's first read starts its whole download in the background.
      Serves until SIGINT/SIGTERM or \`guoce image umount DIR\`, then undoes every mount; --detach
      returns once mounted and serves in the background. Mounts left by a killed process are cleaned
      up by the next mount or umount (state in --state, default $GUOCE_HOME/mounts).
  guoce image pull REF [--daemon http://127.0.0.1:65001] [--chunks DIR] [--chunk-quota 10GiB] [--json]
      every chunk of the image into the node chunk store (verified); mounts of it, running or later,
      then read no chunk from the network
  guoce image umount DIR [--state DIR] [--timeout 10s] [--json]
      undo a lazy mount: its serving process undoes it on SIGTERM; one that has not within --timeout (hung,
      stopped) is killed and its mounts undone here (FUSE connection aborted, so no reader stays blocked)
`

export async function image (argv: string[]): Promise<number> {
  const [sub, ...rest] = argv
  if (sub == null || sub === '--help' || sub === '-h') { process.stdout.write(USAGE); return sub == null ? 2 : 0 }
  const img = await import('@guoce/image')
  switch (sub) {
    case 'convert': {
      const { values: v } = parse(rest, { source: { type: 'string' }, target: { type: 'string' }, 'chunk-size': { type: 'string' }, 'chunk-dict': { type: 'string', multiple: true }, 'prefetch-trace': { type: 'string' }, 'plain-http': { type: 'boolean' }, compression: { type: 'string' }, 'compression-level': { type: 'string' } })
      if (v.help === true) { process.stdout.write(USAGE); return 0 }
      if (typeof v.source !== 'string' || typeof v.target !== 'string') throw new InvalidParametersError('--source and --target are required')
      const trace = v['prefetch-trace'] as string | undefined
      if (trace != null && !v.target.startsWith('oci:')) throw new InvalidParametersError('--prefetch-trace needs an oci:DIR[:TAG] target (push the result with skopeo)')
      // a malformed trace is refused before anything is written
      const lazy = trace != null ? await import('@guoce/lazy-mount') : undefined
      const parsed = lazy !== undefined && trace != null ? lazy.parseTrace(await readFile(trace), trace) : undefined
      // a trace that names the files read: their short chunks are packed together, and the stored list names
      // the new image's entries that hold them (a trace without files is stored as it is)
      const files = parsed?.files !== undefined && parsed.files.length > 0 ? parsed.files : undefined
      const chunkSize = sizeBytes(v['chunk-size'] as string | undefined, '--chunk-size')
      const compression = v.compression as string | undefined
      if (compression !== undefined && compression !== 'zstd' && compression !== 'none') throw new InvalidParametersError('--compression must be zstd or none')
      const levelArg = v['compression-level'] as string | undefined
      const level = levelArg === undefined ? undefined : Number(levelArg)
      if (level !== undefined && (!Number.isInteger(level) || level < 1 || level > 22)) throw new InvalidParametersError('--compression-level must be an integer from 1 to 22')
      const t0 = Date.now()
      const r = await img.convertImage(v.source, v.target, {
        ...(chunkSize != null ? { chunkSize } : {}), ...(v['chunk-dict'] != null ? { chunkDict: v['chunk-dict'] as string[] } : {}), ...(v['plain-http'] === true ? { plainHttp: true } : {}),
        ...(compression !== undefined ? { compression } : {}), ...(level !== undefined ? { compressionLevel: level } : {}),
        ...(files !== undefined ? { hotChunks: img.hotChunks(files) } : {})
      })
      let manifestDigest = r.manifestDigest
      if (lazy !== undefined && parsed !== undefined) {
        const stored = files !== undefined ? { version: 1 as const, chunks: await lazy.entriesOfFiles(v.target, files) } : parsed
        manifestDigest = (await lazy.attachPrefetchTrace(v.target, stored)).manifestDigest
      }
      const summary = { event: 'converted', source: v.source, target: v.target, manifestDigest, layers: r.layers.length, seconds: (Date.now() - t0) / 1000 }
      process.stdout.write(v.json === true ? JSON.stringify(summary) + '\n' : `${v.target}: ${r.layers.length} layers, manifest ${manifestDigest}\n`)
      return 0
    }
    case 'inspect': {
      const { values: v, positionals } = parse(rest, { files: { type: 'boolean' } }, true)
      if (v.help === true) { process.stdout.write(USAGE); return 0 }
      if (positionals.length !== 1) throw new InvalidParametersError('guoce image inspect needs exactly one oci:DIR[:TAG]')
      const r = await img.inspectImageRef(positionals[0]!, { files: v.files === true })
      if (v.json === true) { process.stdout.write(JSON.stringify(r) + '\n'); return 0 }
      process.stdout.write(`manifest ${r.manifestDigest}  chunk size ${r.chunkSize}\n`)
      for (const l of r.layers) process.stdout.write(`layer ${l.digest}${l.sourceDigest != null ? ` (from ${l.sourceDigest})` : ''}  blobs ${l.blobs.length}\n`)
      const ratio = r.blobBytes > 0 ? (r.fileBytes / r.blobBytes).toFixed(2) : '-'
      process.stdout.write(`file bytes ${r.fileBytes}  blob bytes ${r.blobBytes}  dedup ${ratio}x\n`)
      return 0
    }
    case 'check': {
      const { values: v, positionals } = parse(rest, {}, true)
      if (v.help === true) { process.stdout.write(USAGE); return 0 }
      if (positionals.length !== 1) throw new InvalidParametersError('guoce image check needs exactly one oci:DIR[:TAG]')
      const reports = await img.checkImageRef(positionals[0]!)
      if (v.json === true) process.stdout.write(JSON.stringify({ ok: true, layers: reports }) + '\n')
      else for (const r of reports) process.stdout.write(`ok ${r.digest}: ${r.inodes} inodes, ${r.chunksChecked} chunks, ${r.bytesChecked} bytes verified\n`)
      return 0
    }
    case 'mount': return await mount(rest)
    case 'pull': {
      const { values: v, positionals } = parse(rest, { daemon: { type: 'string' }, chunks: { type: 'string' }, 'chunk-quota': { type: 'string' } }, true)
      if (v.help === true) { process.stdout.write(USAGE); return 0 }
      if (positionals.length !== 1) throw new InvalidParametersError('guoce image pull needs exactly one REF')
      const chunkQuota = sizeBytes(v['chunk-quota'] as string | undefined, '--chunk-quota')
      const lazy = await import('@guoce/lazy-mount')
      const t0 = Date.now()
      const r = await lazy.fillChunks(positionals[0]!, {
        chunkDir: (v.chunks as string | undefined) ?? join(defaultHome(), 'chunks'),
        ...(chunkQuota != null ? { chunkQuota } : {}),
        ...(typeof v.daemon === 'string' ? { daemon: v.daemon } : {})
      })
      const summary = { event: 'pulled', ref: positionals[0], ...r, seconds: (Date.now() - t0) / 1000 }
      process.stdout.write(v.json === true ? JSON.stringify(summary) + '\n' : `${positionals[0]!}: ${r.chunks} chunks, ${r.fetched} fetched (${r.fetchedBytes} bytes), ${r.present} already here\n`)
      return 0
    }
    case 'umount': {
      const { values: v, positionals } = parse(rest, { state: { type: 'string' }, timeout: { type: 'string' } }, true)
      if (v.help === true) { process.stdout.write(USAGE); return 0 }
      if (positionals.length !== 1) throw new InvalidParametersError('guoce image umount needs exactly one DIR')
      const lazy = await import('@guoce/lazy-mount')
      const grace = durationMs(v.timeout as string | undefined, '--timeout') ?? lazy.UMOUNT_GRACE_MS
      const st = await lazy.lazyUmount(positionals[0]!, (v.state as string | undefined) ?? join(defaultHome(), 'mounts'), grace)
      process.stdout.write(v.json === true ? JSON.stringify({ event: 'unmounted', target: st.target, ref: st.ref }) + '\n' : `unmounted ${st.target}\n`)
      return 0
    }
    default:
      throw new InvalidParametersError(`unknown image command "${sub}"`)
  }
}

const MOUNT_OPTIONS = {
  detach: { type: 'boolean' }, mode: { type: 'string' }, daemon: { type: 'string' }, state: { type: 'string' }, chunks: { type: 'string' },
  'chunk-quota': { type: 'string' }, 'fetch-timeout': { type: 'string' }, 'read-timeout': { type: 'string' },
  'record-trace': { type: 'string' }, 'no-prefetch': { type: 'boolean' }, digest: { type: 'string' }, 'index-digest': { type: 'string' }, 'plain-http': { type: 'boolean' }, 'whole-blobs': { type: 'boolean' }
} as const

/** `guoce image mount`: serves in the foreground until a signal, or (--detach) in a child that outlives us. */
async function mount (argv: string[]): Promise<number> {
  const { values: v, positionals } = parse(argv, MOUNT_OPTIONS, true)
  if (v.help === true) { process.stdout.write(USAGE); return 0 }
  if (positionals.length !== 2) throw new InvalidParametersError('guoce image mount needs REF and DIR')
  const [ref, dir] = positionals as [string, string]
  const stateDir = (v.state as string | undefined) ?? join(defaultHome(), 'mounts')
  const json = v.json === true
  if (v.detach === true) {
    await mkdir(stateDir, { recursive: true })
    const log = await open(join(stateDir, 'detached.log'), 'a')
    const child = spawn(process.execPath, [process.argv[1]!, 'image', 'mount', ...argv.filter(a => a !== '--detach'), '--json'], { detached: true, stdio: ['ignore', 'pipe', log.fd] })
    await log.close()
    const line = await new Promise<string | undefined>((resolve) => {
      createInterface({ input: child.stdout! }).once('line', resolve)
      child.once('exit', () => { resolve(undefined) })
    })
    if (line === undefined) throw new InvalidParametersError(`the mount process exited before mounting; see ${join(stateDir, 'detached.log')}`)
    child.stdout!.destroy()
    child.unref()
    const ready = JSON.parse(line) as { target: string, pid: number }
    process.stdout.write(json ? line + '\n' : `mounted ${ref} at ${ready.target} (served by pid ${ready.pid})\n`)
    return 0
  }
  // a trace records the files read: in fuse mode the kernel's reads are of the files themselves (its read-ahead
  // ends at a file's end), in erofs mode of the blob files, where read-ahead runs into the next files of the tar
  const mode = (v.mode as string | undefined) ?? (typeof v['record-trace'] === 'string' ? 'fuse' : 'erofs')
  if (mode !== 'erofs' && mode !== 'fuse') throw new InvalidParametersError(`--mode ${mode}: erofs or fuse`)
  const lazy = await import('@guoce/lazy-mount')
  const fetchTimeoutMs = durationMs(v['fetch-timeout'] as string | undefined, '--fetch-timeout')
  const readDeadlineMs = durationMs(v['read-timeout'] as string | undefined, '--read-timeout')
  const chunkQuota = sizeBytes(v['chunk-quota'] as string | undefined, '--chunk-quota')
  const verbose = process.env.GUOCE_LOG === 'debug' || process.env.GUOCE_LOG === 'info'
  const osUrl = lazy.osImageUrl(ref)
  if ((v.digest != null || v['index-digest'] != null) && osUrl === undefined) throw new InvalidParametersError('--digest and --index-digest are for erofs+http(s):// images')
  const m = osUrl !== undefined
    ? await lazy.osImageMount(osUrl, dir, {
      daemon: (v.daemon as string | undefined) ?? process.env.GUOCE_DAEMON ?? 'http://127.0.0.1:65001',
      stateDir,
      chunkDir: (v.chunks as string | undefined) ?? join(defaultHome(), 'chunks'),
      ...(chunkQuota != null ? { chunkQuota } : {}),
      ...(typeof v.digest === 'string' ? { digest: v.digest } : {}),
      ...(typeof v['index-digest'] === 'string' ? { indexDigest: v['index-digest'] } : {}),
      ...(fetchTimeoutMs != null ? { fetchTimeoutMs } : {}),
      ...(readDeadlineMs != null ? { readDeadlineMs } : {}),
      ...(verbose ? { log: (o: Record<string, unknown>) => { process.stderr.write(JSON.stringify({ component: 'os-image', ...o }) + '\n') } } : {})
    })
    : await lazy.lazyMount(ref, dir, {
    mode,
    stateDir,
    chunkDir: (v.chunks as string | undefined) ?? join(defaultHome(), 'chunks'),
    ...(chunkQuota != null ? { chunkQuota } : {}),
    ...(typeof v.daemon === 'string' ? { daemon: v.daemon } : {}),
    ...(fetchTimeoutMs != null ? { fetchTimeoutMs } : {}),
    ...(readDeadlineMs != null ? { readDeadlineMs } : {}),
    ...(typeof v['record-trace'] === 'string' ? { recordTrace: v['record-trace'] } : {}),
    ...(v['no-prefetch'] === true ? { prefetch: false } : {}),
    ...(v['plain-http'] === true ? { plainHttp: true } : {}),
    ...(v['whole-blobs'] === true ? { ranged: false } : {}),
    onPrefetchDone: (r: { chunks: number, ms: number }) => { process.stderr.write(JSON.stringify({ event: 'prefetched', ...r }) + '\n') },
    ...(verbose ? { log: (o: Record<string, unknown>) => { process.stderr.write(JSON.stringify({ component: 'lazy-mount', ...o }) + '\n') } } : {})
  })
  // an uncaught error still detaches every mount (readers then see the mount gone, never a hung one)
  const onExit = (): void => { lazy.unmountSync(m.state) }
  process.once('exit', onExit)
  const { promise, resolve } = Promise.withResolvers<string>()
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, () => { resolve(sig) })
  const ready = { event: 'mounted', ref, target: m.target, id: m.id, pid: process.pid }
  process.stdout.write(json ? JSON.stringify(ready) + '\n' : `mounted ${ref} at ${m.target}; serving until SIGINT/SIGTERM or guoce image umount\n`)
  await promise
  await m.unmount()
  process.off('exit', onExit)
  process.stderr.write(JSON.stringify({ event: 'unmounted', target: m.target, ...m.stats() }) + '\n')
  return 0
}
