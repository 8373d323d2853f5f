import { afterAll, describe, expect, it } from 'vitest'
import { Database, DataDirLockedError, SUBLEVELS } from '../../storage/database.ts'
import { TestBed } from '../helpers/daemons.ts'

const bed = new TestBed()
afterAll(async () => bed.cleanup())

describe('database', () => {
  it('keeps a second process (or handle) out of a data directory in use', async () => {
    const dir = await bed.tempDir()
    const db = await Database.open(dir)
    try {
      const err = await Database.open(dir).catch((e: unknown) => e)
      expect(err).toBeInstanceOf(DataDirLockedError)
      expect((err as Error).message).toContain(`data directory ${dir} is in use by another process`)
    } finally {
      await db.close()
    }
  })

  it('persists sublevel writes across a reopen', async () => {
    const dir = await bed.tempDir()
    const db = await Database.open(dir)
    await db.sublevel(SUBLEVELS.libp2p).put('k', Uint8Array.of(1, 2, 3))
    await db.close()
    const again = await Database.open(dir)
    try {
      expect([...await again.sublevel(SUBLEVELS.libp2p).get('k') ?? []]).toEqual([1, 2, 3])
    } finally {
      await again.close()
    }
  })
})
