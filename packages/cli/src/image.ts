/**
 * `guoce image convert | inspect | check`: thin wiring over @guoce/image.
 */
import { InvalidParametersError } from '@guoce/interface'
import { parse, sizeBytes } from './args.js'

const USAGE = `Usage: guoce image <convert|inspect|check> ...

  guoce image convert --source REF --target REF [--chunk-size 1MiB] [--chunk-dict REF]... [--compression zstd|none]
                      [--compression-level 3] [--plain-http] [--json]
      turn an OCI image into a chunk-deduplicated lazy image (EROFS metadata layers + blobs of zstd-compressed chunks)
      REF is oci:DIR[:TAG] (OCI image layout) or docker://REGISTRY/REPO[:TAG][@sha256:DIGEST] (registry;
      http for 127.0.0.1/localhost, https otherwise, --plain-http forces http; token/basic auth with
      credentials from GUOCE_REGISTRY_AUTH=user:pass)
  guoce image inspect oci:DIR[:TAG] [--files] [--json]
      layers, files, chunks and dedup figures of a converted image
  guoce image check oci:DIR[:TAG] [--json]
      verify every metadata structure and every chunk digest; exits non-zero on the first fault, naming it
`

export async function image (argv: string[]): Promise<number> {
  const [sub, ...rest] = argv
  if (sub == null || sub === '--help' || sub === '-h') { process.stdout.write(USAGE); return sub == null ? 2 : 0 }
  const img = await import('@guoce/image')
  switch (sub) {
    case 'convert': {
      const { values: v } = parse(rest, { source: { type: 'string' }, target: { type: 'string' }, 'chunk-size': { type: 'string' }, 'chunk-dict': { type: 'string', multiple: true }, 'plain-http': { type: 'boolean' }, compression: { type: 'string' }, 'compression-level': { type: 'string' } })
      if (v.help === true) { process.stdout.write(USAGE); return 0 }
      if (typeof v.source !== 'string' || typeof v.target !== 'string') throw new InvalidParametersError('--source and --target are required')
      const chunkSize = sizeBytes(v['chunk-size'] as string | undefined, '--chunk-size')
      const compression = v.compression as string | undefined
      if (compression !== undefined && compression !== 'zstd' && compression !== 'none') throw new InvalidParametersError('--compression must be zstd or none')
      const levelArg = v['compression-level'] as string | undefined
      const level = levelArg === undefined ? undefined : Number(levelArg)
      if (level !== undefined && (!Number.isInteger(level) || level < 1 || level > 22)) throw new InvalidParametersError('--compression-level must be an integer from 1 to 22')
      const t0 = Date.now()
      const r = await img.convertImage(v.source, v.target, {
        ...(chunkSize != null ? { chunkSize } : {}), ...(v['chunk-dict'] != null ? { chunkDict: v['chunk-dict'] as string[] } : {}), ...(v['plain-http'] === true ? { plainHttp: true } : {}),
        ...(compression !== undefined ? { compression } : {}), ...(level !== undefined ? { compressionLevel: level } : {})
      })
      const summary = { event: 'converted', source: v.source, target: v.target, manifestDigest: r.manifestDigest, layers: r.layers.length, seconds: (Date.now() - t0) / 1000 }
      process.stdout.write(v.json === true ? JSON.stringify(summary) + '\n' : `${v.target}: ${r.layers.length} layers, manifest ${r.manifestDigest}\n`)
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
    default:
      throw new InvalidParametersError(`unknown image command "${sub}"`)
  }
}
