/**
 * @packageDocumentation
 *
 * The registry mirror: the read side of the OCI distribution API (`/v2/`, manifests and tags, blobs with
 * Range, referrers) in front of an upstream registry (containerd's `?ns=`, or a default). Manifests by tag
 * are proxied (cached seconds), by digest cached and verified; blobs are P2P tasks keyed by digest, read
 * through the daemon's TaskReader and streamed as their pieces arrive. Every object is served only after
 * the upstream confirmed, to the client's own Authorization, that this client may read its repository.
 *
 * ```ts
 * const mirror = buildMirror({ reader: daemon.reader, log })
 * await mirror.app.listen({ host: '127.0.0.1', port: DEFAULT_MIRROR_PORT })
 * await writeHostsToml('/etc/containerd/certs.d', 'registry.example.com', 'http://127.0.0.1:65002')
 * ```
 */
export { buildMirror, type Mirror, type MirrorInit, type MirrorStats } from './server.js'
export { hostsToml, writeHostsToml } from './hosts.js'
export { resolveUpstream, type Upstream } from './upstream.js'
export { RegistryMirrorError, type OciCode } from './errors.js'
export * from './constants.js'
