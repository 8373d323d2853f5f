/** p2p/ logs through the same interface as storage/ (see storage/logger.ts). */
export { silentLogger, type Logger, type LogFn } from '../storage/logger.ts'
