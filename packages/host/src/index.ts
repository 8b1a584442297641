/**
 * @packageDocumentation
 *
 * Code every swarm host runs, seed peer and peer daemon alike: back-to-source over HTTP(S) with Range
 * (undici, registry token auth), piece splitting and hashing from origin bytes, serving the store's pieces
 * and announcing what a host holds. `seed-peer` (the seed service) and `peer` (the daemon) build on it.
 */
export * from './source.js'
export * from './fetch.js'
export * from './host.js'
