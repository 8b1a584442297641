/**
 * The registry mounter and plain-http registries (`guoce daemon --snapshotter-insecure REGISTRY`): a converted
 * image in a distribution registry that speaks http on a loopback address other than 127.0.0.1 (so not
 * plain by default, as a node's registry on another host). Without the option the mounter asks it over https,
 * fails, and declines the layer (containerd would download it); with it, the layer is mounted (file-backed
 * EROFS over the mounter's FUSE blob server; chunks from the local layout here) and a child process reads a file
 * of the image through it. And a Prepare whose caller gives up while the metadata layer is still coming (a
 * registry that stalls it) stops waiting at once and mounts nothing, though the fetch is shared with the image's
 * background start.
 */
import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { execFile } from 'node:child_process'
import { createServer, request, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { promisify } from 'node:util'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import * as native from '@guoce/native-mount'
import { registryMounter, chainIds, type RegistryMounter } from '@guoce/snapshotter'
import { localBlobSource } from '@guoce/lazy-mount'
import { busyboxImage, runGuoce, startRegistry, unmountUnder, type Registry } from '@guoce/testkit'

const exec = promisify(execFile)
const META = 'application/vnd.oci.image.layer.guoce.erofs.v1'

interface Manifest { layers: Array<{ digest: string, mediaType: string }>, config: { digest: string } }

describe('registry mounter: registries over plain http', () => {
  let T = ''
  let registry: Registry | undefined
  const mounters: RegistryMounter[] = []

  beforeAll(async () => {
    T = await mkdtemp(join(tmpdir(), 'guoce-insecure-'))
    await busyboxImage(join(T, 'src'), 'v1', [async r => { await writeFile(join(r, 'greeting'), 'hello over http\n') }])
    const conv = await runGuoce(['image', 'convert', '--source', `oci:${join(T, 'src')}:v1`, '--target', `oci:${join(T, 'lazy')}:v1`, '--json'])
    expect(conv.code, conv.stderr).toBe(0)
    registry = await startRegistry(join(T, 'registry'), { addr: '127.0.0.2:0' })
    await exec('skopeo', ['copy', '--dest-tls-verify=false', `oci:${join(T, 'lazy')}:v1`, `docker://${registry.host}/guoce/insecure:v1`])
  })

  afterAll(async () => {
    for (const m of mounters) await m.close().catch(() => {})
    if (T !== '') await unmountUnder(T)
    await registry?.stop()
    if (T !== '') await rm(T, { recursive: true, force: true })
  })

  const layerOf = async (imageRef: string): Promise<{ ref: string, imageRef: string, layerDigest: string, manifestDigest: string, labels: Record<string, string> }> => {
    const index = JSON.parse(await readFile(join(T, 'lazy', 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> }
    const manifestDigest = index.manifests[0]!.digest
    const blob = (d: string): string => join(T, 'lazy', 'blobs', 'sha256', d.slice(7))
    const manifest = JSON.parse(await readFile(blob(manifestDigest), 'utf8')) as Manifest
    const chain = chainIds((JSON.parse(await readFile(blob(manifest.config.digest), 'utf8')) as { rootfs: { diff_ids: string[] } }).rootfs.diff_ids)
    const i = manifest.layers.findIndex(l => l.mediaType === META)
    return { ref: chain[i]!, imageRef, layerDigest: manifest.layers[i]!.digest, manifestDigest, labels: {} }
  }

  it('a Prepare whose caller gives up while its metadata layer is stalled stops at once and mounts nothing', async () => {
    // a registry front that passes everything through but the metadata layer's blob, which it never answers
    const layer0 = await layerOf('')
    const held: Array<() => void> = []
    const front: Server = createServer((req, res) => {
      if (req.url?.includes(layer0.layerDigest) === true) { held.push(() => { res.destroy() }); return }
      const up = request({ host: registry!.host.split(':')[0], port: Number(registry!.host.split(':')[1]), method: req.method, path: req.url, headers: req.headers }, r => {
        res.writeHead(r.statusCode ?? 502, r.headers)
        r.pipe(res)
      })
      up.on('error', () => { res.destroy() })
      req.pipe(up)
    })
    await new Promise<void>(resolve => front.listen(0, '127.0.0.1', resolve))
    try {
      const host = `127.0.0.1:${(front.address() as AddressInfo).port}`
      const layer = { ...layer0, imageRef: `${host}/guoce/insecure:v1` }
      const m = registryMounter({ dir: join(T, 'stall'), chunkDir: join(T, 'stall-chunks'), daemon: 'http://127.0.0.1:9', mounter: native, source: localBlobSource(join(T, 'lazy')) })
      mounters.push(m)
      await mkdir(join(T, 'd-stall'))
      const ac = new AbortController()
      const t0 = performance.now()
      const mounted = m.mount(layer, join(T, 'd-stall'), { signal: ac.signal })
      await new Promise(resolve => setTimeout(resolve, 500))
      expect(held.length).toBeGreaterThan(0) // the metadata layer was asked for, and is being held
      ac.abort(new Error('caller gone'))
      await expect(mounted).rejects.toThrow(/caller gone/)
      expect(performance.now() - t0).toBeLessThan(3_000)
      expect((await readFile('/proc/self/mountinfo', 'utf8')).includes(join(T, 'd-stall'))).toBe(false)
    } finally {
      for (const h of held) h()
      await new Promise(resolve => front.close(resolve))
    }
  })

  it('declines the layer over https; mounts it over http when the registry is named insecure', async () => {
    expect(registry!.host).toMatch(/^127\.0\.0\.2:\d+$/)
    const from = registry!.log.length // the test above went through to the registry too
    const layer = await layerOf(`${registry!.host}/guoce/insecure:v1`)
    const mounter = (name: string, insecure?: string[]): RegistryMounter => {
      const m = registryMounter({ dir: join(T, name), chunkDir: join(T, `${name}-chunks`), daemon: 'http://127.0.0.1:9', mounter: native, source: localBlobSource(join(T, 'lazy')), ...(insecure !== undefined ? { insecure } : {}) })
      mounters.push(m)
      return m
    }

    await mkdir(join(T, 'd1'))
    expect(await mounter('m1').mount(layer, join(T, 'd1'), {})).toBe(false)
    expect(registry!.log.slice(from).some(l => l.includes('http.request.uri="/v2/guoce/insecure/manifests/'))).toBe(false) // nothing got through
    expect(await mounter('m2', ['127.0.0.1:5000']).mount(layer, join(T, 'd1'), {})).toBe(false) // another registry's name changes nothing

    const m3 = mounter('m3', [registry!.host])
    await mkdir(join(T, 'd3'))
    expect(await m3.mount(layer, join(T, 'd3'), {})).toBe(true)
    try {
      // read by another process: never the one that serves the FUSE mount
      const { stdout } = await exec('timeout', ['-s', 'KILL', '20', 'cat', join(T, 'd3', 'greeting')])
      expect(stdout).toBe('hello over http\n')
    } finally { await m3.unmount(join(T, 'd3')) }
  })
})
