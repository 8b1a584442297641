/**
 * @packageDocumentation
 *
 * The seed peer: back-to-source over HTTP(S) with Range (undici), piece splitting and hashing
 * from origin bytes, and the seed service that serves pieces while the origin download still runs.
 *
 * ```ts
 * const seed = new SeedPeer({ node, store, scheduler: '/ip4/127.0.0.1/tcp/65003/p2p/12D3…', log })
 * await seed.start()
 * ```
 */
export * from './source.js'
export * from './fetch.js'
export * from './seed.js'
