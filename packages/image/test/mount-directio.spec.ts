/**
 * mountLayer asks EROFS for `directio` (device reads of exactly a file's blocks) where the kernel has it, and
 * mounts without it where the kernel refuses the option: the decision is taken once per process, and an
 * error that is not the option's (a mount that fails either way) is the caller's. The real kernel's answer is
 * exercised by every mount in chunks.spec and the lazy-mount suites; here a recording Mounter plays a kernel
 * with and without the option (each case with a fresh module, so a fresh decision).
 */
import { afterEach, describe, expect, it, vi } from 'vitest'
import type { Mounter } from '../src/index.js'

type Call = string | null

function kernel (opts: { directio: boolean, fail?: string }): { m: Mounter, calls: Call[] } {
  const calls: Call[] = []
  const m: Mounter = {
    mount: async (_source, _target, _fstype, _flags, data) => {
      calls.push(data ?? null)
      if (opts.fail !== undefined) throw Object.assign(new Error(opts.fail), { code: opts.fail })
      if (data?.split(',').includes('directio') === true && !opts.directio) throw Object.assign(new Error('mount: Invalid argument'), { code: 'EINVAL' })
    },
    umount2: async () => {},
    constants: { MS_RDONLY: 1, MS_BIND: 4096, MNT_DETACH: 2 }
  }
  return { m, calls }
}

async function fresh (): Promise<typeof import('../src/index.js')> {
  vi.resetModules()
  return await import('../src/index.js')
}

describe('mountLayer and EROFS directio', () => {
  afterEach(() => { vi.resetModules() })
  const layer = { meta: '/m.erofs', blobs: ['/b1', '/b2'] }

  it('asks for directio, and keeps asking, where the kernel has it', async () => {
    const { mountLayer } = await fresh()
    const k = kernel({ directio: true })
    await mountLayer(layer, '/t1', k.m)
    await mountLayer(layer, '/t2', k.m)
    expect(k.calls).toEqual(['device=/b1,device=/b2,directio', 'device=/b1,device=/b2,directio'])
  })

  it('a kernel that refuses the option: the layer is mounted without it, and later mounts do not ask again', async () => {
    const { mountLayer } = await fresh()
    const k = kernel({ directio: false })
    await mountLayer(layer, '/t1', k.m)
    await mountLayer(layer, '/t2', k.m)
    expect(k.calls).toEqual(['device=/b1,device=/b2,directio', 'device=/b1,device=/b2', 'device=/b1,device=/b2'])
  })

  it('a mount that fails for another reason fails, and the next one still asks for directio', async () => {
    const { mountLayer } = await fresh()
    const bad = kernel({ directio: true, fail: 'ENOENT' })
    await expect(mountLayer(layer, '/t1', bad.m)).rejects.toMatchObject({ code: 'ENOENT' })
    expect(bad.calls).toEqual(['device=/b1,device=/b2,directio'])
    // EINVAL both ways (an image the kernel refuses, not the option): the error is the caller's, nothing decided
    const refused = kernel({ directio: true, fail: 'EINVAL' })
    await expect(mountLayer(layer, '/t2', refused.m)).rejects.toMatchObject({ code: 'EINVAL' })
    expect(refused.calls).toEqual(['device=/b1,device=/b2,directio', 'device=/b1,device=/b2'])
    const good = kernel({ directio: true })
    await mountLayer(layer, '/t3', good.m)
    expect(good.calls).toEqual(['device=/b1,device=/b2,directio'])
  })

  it('a layer without blobs is mounted with no options at all', async () => {
    const { mountLayer } = await fresh()
    const k = kernel({ directio: true })
    await mountLayer({ meta: '/m.erofs', blobs: [] }, '/t', k.m)
    expect(k.calls).toEqual([null])
  })
})
