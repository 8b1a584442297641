/**
 * Builds test rootfs trees on disk (busybox-static plus every inode kind tar can carry) and layer tars
 * from them with GNU tar.
 */
import { run } from './helpers.js'

/** A rootfs: busybox-static with its applet symlinks, plus files covering every case the format must keep. */
export const ROOTFS_SCRIPT = String.raw`
set -eu
R="$1"
mkdir -p "$R/bin" "$R/etc" "$R/usr/lib" "$R/data" "$R/dev" "$R/tmp" "$R/empty-dir"
cp /bin/busybox "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"; done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
printf 'hello\n' > "$R/etc/hostname"
# every inode kind tar carries
mknod "$R/dev/null" c 1 3
mknod "$R/dev/bigminor" c 240 300000
mknod "$R/dev/loop9" b 7 9
mkfifo "$R/dev/fifo"
# hardlinks (three names, one inode; one across directories)
printf 'shared inode\n' > "$R/data/h1"; ln "$R/data/h1" "$R/data/h2"; ln "$R/data/h1" "$R/etc/h3"
# symlinks: relative, absolute, climbing, dangling, long target
ln -s ../etc/passwd "$R/data/rel"
ln -s /etc/passwd "$R/data/abs"
ln -s ../../../../../etc/shadow "$R/data/climb"
ln -s does/not/exist "$R/data/dangling"
ln -s "$(printf 't%.0s' $(seq 1 300))" "$R/data/longtarget"
# long names and a deep tree
touch "$R/data/$(printf 'n%.0s' $(seq 1 255))"
D="$R/deep"; for i in $(seq 1 40); do D="$D/level_$i"; done; mkdir -p "$D"; printf 'bottom\n' > "$D/file"
# a directory spanning several blocks
mkdir "$R/bigdir"; for i in $(seq 1 400); do : > "$R/bigdir/entry_with_a_fairly_long_name_number_$i"; done
# unicode and odd bytes in names
printf 'u\n' > "$R/data/ünïcødé-名前"
printf 's\n' > "$R/data/with space"
# empty files, sparse, multi-chunk, duplicates (dedup), repeated blocks
: > "$R/data/empty"
truncate -s 3M "$R/data/sparse"; printf 'middle' | dd of="$R/data/sparse" bs=1 seek=1500000 conv=notrunc status=none
head -c 700000 /dev/urandom > "$R/data/multi"
cp "$R/data/multi" "$R/data/multi-copy"
head -c 65536 /dev/urandom > "$R/tmp/block"; for i in 1 2 3 4 5 6; do cat "$R/tmp/block"; done > "$R/data/repeated"; rm "$R/tmp/block"
# modes and owners (one beyond 16 bits, which needs an extended inode)
chmod 4755 "$R/bin/busybox"; chmod 1777 "$R/tmp"; chmod 0 "$R/etc/hostname"; chmod 2750 "$R/usr/lib"
printf 'owned\n' > "$R/data/owned"; chown 1000:1001 "$R/data/owned"
printf 'big\n' > "$R/data/bigid"; chown 70000:80000 "$R/data/bigid"
# xattrs: user, trusted, security; inline and shared (same pair on several inodes)
setfattr -n user.comment -v "a comment" "$R/data/owned"
setfattr -n trusted.example -v 0x0102030405 "$R/data/owned"
setfattr -n security.test -v sec "$R/etc/passwd"
for f in "$R/data/multi" "$R/data/multi-copy" "$R/data/empty"; do setfattr -n user.shared -v "same value on many inodes" "$f"; done
setfattr -n user.dirattr -v yes "$R/data"
setfattr -n user.big -v "$(head -c 3000 /dev/zero | tr '\0' 'x')" "$R/data/empty"
# OCI whiteouts (regular files in the layer tar), unless this is a base layer
if [ "$2" = whiteouts ]; then
  mkdir -p "$R/gone" "$R/opaque"; : > "$R/gone/.wh.removed"; : > "$R/opaque/.wh..wh..opq"; printf 'kept\n' > "$R/opaque/kept"
fi
# times: nanoseconds, the epoch, far future, before the epoch
touch -h -d @1234567890.123456789 "$R/data/owned"
touch -h -d @0 "$R/data/empty"
touch -h -d @4102444800 "$R/data/bigid"
touch -h -d @-1000 "$R/data/h1"
touch -h -d @1600000000 "$R/data/abs"
`

export async function makeRootfs (dir: string, opts: { whiteouts?: boolean } = {}): Promise<void> {
  await run('sh', ['-c', ROOTFS_SCRIPT, 'sh', dir, (opts.whiteouts ?? true) ? 'whiteouts' : 'base'], { maxBuffer: 64 * 1024 * 1024 })
}

export type TarFormat = 'pax' | 'gnu' | 'ustar'

/** tar of a directory's contents (members named `./...`), sorted by name. */
export async function tarDir (dir: string, out: string, format: TarFormat = 'pax'): Promise<void> {
  const args = [`--format=${format}`, '--numeric-owner', '--sort=name', '-C', dir, '-cf', out, '.']
  if (format === 'pax') args.unshift('--xattrs', '--xattrs-include=*', '--pax-option=delete=atime,delete=ctime')
  await run('tar', args, { maxBuffer: 64 * 1024 * 1024 })
}

/** GNU tar extraction as root: owners, modes, times (and xattrs for pax). */
export async function untar (tar: string, dir: string): Promise<void> {
  await run('tar', ['--xattrs', '--xattrs-include=*', '--numeric-owner', '--same-owner', '-xpf', tar, '-C', dir], { maxBuffer: 64 * 1024 * 1024 })
}
