/**
 * @guoce/native-mount — mount(2) and umount2(2) from Node.js (N-API addon in C).
 *
 * The raw syscall gives the kernel's *file-backed* EROFS mount (util-linux mount(8) would make a loop
 * device, which cannot take `-o device=<regular file>`):
 *
 * ```ts
 * import { mount, umount2, constants } from '@guoce/native-mount'
 * await mount('/img/layer.erofs', '/mnt/x', 'erofs', constants.MS_RDONLY, 'device=/img/layer.blob')
 * await umount2('/mnt/x', 0)
 * ```
 * Errors are `Error`s with `code` = errno name (`EINVAL`, `ENOENT`...), `errno` = -errno, `syscall`, `path`.
 * The promise forms run on the libuv thread pool, so the kernel may open a blob served by FUSE from this
 * same process without deadlock; the `*Sync` forms block the calling thread.
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

export interface MountConstants {
  MS_RDONLY: number, MS_NOSUID: number, MS_NODEV: number, MS_NOEXEC: number, MS_NOATIME: number
  MS_BIND: number, MS_REC: number, MS_PRIVATE: number, MS_REMOUNT: number, MS_SILENT: number
  MNT_FORCE: number, MNT_DETACH: number, MNT_EXPIRE: number, UMOUNT_NOFOLLOW: number
}

interface Addon {
  mountSync: (source: string | null, target: string, fstype: string | null, flags: number, data: string | null) => void
  umount2Sync: (target: string, flags: number) => void
  mount: (source: string | null, target: string, fstype: string | null, flags: number, data: string | null) => Promise<void>
  umount2: (target: string, flags: number) => Promise<void>
  constants: MountConstants
}

/** An errno failure of mount(2)/umount2(2). */
export interface MountError extends Error { code: string, errno: number, syscall: 'mount' | 'umount2', path: string }

const require = createRequire(import.meta.url)

/** The package root: the nearest directory above this module that holds binding.gyp (src/ or dist/src/). */
function packageRoot (): string {
  let dir = import.meta.dirname
  while (!existsSync(join(dir, 'binding.gyp'))) {
    const up = dirname(dir)
    if (up === dir) throw new Error(`@guoce/native-mount: binding.gyp not found above ${import.meta.dirname}`)
    dir = up
  }
  return dir
}

const addonPath = join(packageRoot(), 'build/Release/guoce_mount.node')
if (!existsSync(addonPath)) {
  throw new Error(`@guoce/native-mount: ${addonPath} is missing; build it with \`npm run build -w @guoce/native-mount\` (node-gyp, needs gcc, make, python3 and Node headers)`)
}
const addon = require(addonPath) as Addon

export const constants: MountConstants = addon.constants

/** mount(2) on the thread pool. */
export async function mount (source: string | null, target: string, fstype: string | null, flags = 0, data: string | null = null): Promise<void> {
  await addon.mount(source, target, fstype, flags, data)
}
/** umount2(2) on the thread pool. */
export async function umount2 (target: string, flags = 0): Promise<void> {
  await addon.umount2(target, flags)
}
/** mount(2), blocking. */
export function mountSync (source: string | null, target: string, fstype: string | null, flags = 0, data: string | null = null): void {
  addon.mountSync(source, target, fstype, flags, data)
}
/** umount2(2), blocking. */
export function umount2Sync (target: string, flags = 0): void {
  addon.umount2Sync(target, flags)
}
