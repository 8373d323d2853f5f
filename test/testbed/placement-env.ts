/**
 * Daemon settings for placement runs on the testbed: the default failure
 * detection and liveness timeout (failover is measured with the defaults), a
 * square world of `side` × `side` units in 100-unit cells with one
 * host-authoritative layer, and short hold times.
 *
 * Load on a shared test machine swings from one second to the next, and
 * uptime over a minute-old mesh says little (a node down 20 s of its 60 looks
 * half as reliable), so headroom and reliability weigh nothing here:
 * agreement, failover and churn are measured without them.
 */
export function placementTestEnv (options: { side: number }): NodeJS.ProcessEnv {
  return {
    METAGRID_TELEMETRY_INTERVAL_MS: '500',
    METAGRID_PLACEMENT_WORLD_MAX_X: String(options.side),
    METAGRID_PLACEMENT_WORLD_MAX_Y: String(options.side),
    METAGRID_PLACEMENT_WORLD_CELL_SIZE: '100',
    METAGRID_PLACEMENT_WORLD_LAYERS: JSON.stringify([{ name: 'physics', consistency: 'host' }]),
    METAGRID_PLACEMENT_MARGIN_MS: '500',
    METAGRID_PLACEMENT_TICK_MS: '500',
    METAGRID_PLACEMENT_MIN_HOLD_MS: '3000',
    METAGRID_PLACEMENT_SETTLE_MS: '3000',
    METAGRID_PLACEMENT_WEIGHTS_HEADROOM: '0',
    METAGRID_PLACEMENT_WEIGHTS_RELIABILITY: '0'
  }
}
