/**
 * @packageDocumentation
 *
 * The seed peer: the seed service that takes the scheduler's seed orders, fetches the origin once through
 * `@guoce/host`'s back-to-source (HTTP(S) with Range, registry token auth), and serves pieces while the
 * origin download still runs.
 *
 * ```ts
 * const seed = new SeedPeer({ node, store, scheduler: '/ip4/127.0.0.1/tcp/65003/p2p/12D3…', log })
 * await seed.start()
 * ```
 */
export * from './seed.js'
