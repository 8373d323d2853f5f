/**
 * The binary codec under CRDT deltas and snapshots, in the style of lib0
 * (yjs): an Encoder that grows a buffer and a Decoder that reads it back with
 * paired `writeX` / `readX` calls. Unsigned integers are LEB128 varints,
 * signed ones zigzag varints, strings length-prefixed UTF-8, and JSON values
 * a small tagged form. Every read checks its bounds: garbage input throws a
 * CodecError, never a RangeError from deep inside, and never loops forever.
 */

export class CodecError extends Error {
  static override name = 'CodecError'
  override name = 'CodecError'
}

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue }

/** Nesting deeper than this in a JSON value is refused: no legitimate component needs it, and recursion must stay bounded. */
export const MAX_JSON_DEPTH = 32
/** A string longer than this is refused on decode (component values are capped far lower by the API). */
export const MAX_STRING_BYTES = 1 << 20

/**
 * Checks that a value is JSON the codec writes and reads back unchanged: plain
 * objects and arrays nested at most MAX_JSON_DEPTH deep, finite numbers,
 * well-formed strings (a lone surrogate would come back as U+FFFD) of at most
 * MAX_STRING_BYTES, no `__proto__` key. Throws CodecError, so a document never
 * holds a value that cannot be logged, gossiped, and replayed after a restart.
 *
 * Returns the value's *encoded size*: UTF-8 bytes of its strings and keys
 * plus a few bytes per item (a bound on what the codec writes, close to the
 * JSON text's length). It is the one measure of a value's size: the API, the
 * document and the admission layer all hold values to `maxValueBytes` by it,
 * so a value one of them takes, none of the others refuses.
 */
export function checkJson (value: unknown, depth = 0): number {
  if (depth > MAX_JSON_DEPTH) throw new CodecError(`JSON value nested deeper than ${MAX_JSON_DEPTH}`)
  if (value === null || value === true || value === false) return 1
  switch (typeof value) {
    case 'number':
      if (!Number.isFinite(value)) throw new CodecError('JSON numbers must be finite')
      return 8
    case 'string':
      return 1 + checkString(value)
    case 'object': {
      let bytes = 2
      if (Array.isArray(value)) {
        for (const item of value) bytes += checkJson(item, depth + 1)
        return bytes
      }
      const prototype = Object.getPrototypeOf(value)
      if (prototype !== Object.prototype && prototype !== null) throw new CodecError('JSON objects must be plain objects')
      for (const key of Object.keys(value)) {
        if (key === '__proto__') throw new CodecError('object key __proto__ is not allowed')
        bytes += checkString(key) + checkJson((value as Record<string, unknown>)[key], depth + 1)
      }
      return bytes
    }
    default:
      throw new CodecError(`not a JSON value: ${typeof value}`)
  }
}

function utf8Length (value: string): number {
  let bytes = 0
  for (let i = 0; i < value.length; i++) {
    const code = value.charCodeAt(i)
    if (code < 0x80) bytes += 1
    else if (code < 0x800) bytes += 2
    else if (code >= 0xd800 && code <= 0xdbff) { bytes += 4; i++ } else bytes += 3
  }
  return bytes
}

/** A string's encoded size, refusing what would not come back the same. */
export function checkString (value: string): number {
  if (!value.isWellFormed()) throw new CodecError('string holds a lone surrogate (not well-formed UTF-16)')
  const bytes = utf8Length(value)
  if (bytes > MAX_STRING_BYTES) throw new CodecError(`string of ${bytes} bytes is too long (at most ${MAX_STRING_BYTES})`)
  return bytes + 2
}

const utf8 = new TextEncoder()
const utf8Decoder = new TextDecoder('utf-8', { fatal: true })

const TAG_NULL = 0
const TAG_FALSE = 1
const TAG_TRUE = 2
const TAG_INT = 3
const TAG_FLOAT = 4
const TAG_STRING = 5
const TAG_ARRAY = 6
const TAG_OBJECT = 7
/** A float that float32 represents exactly (0.5, 31.25, most game coordinates on a grid) in 4 bytes. */
const TAG_FLOAT32 = 8

function sorted (names: string[]): boolean {
  for (let i = 1; i < names.length; i++) if (names[i - 1]! > names[i]!) return false
  return true
}

export class Encoder {
  private buffer: Uint8Array
  private view: DataView
  private position = 0

  constructor (initialSize = 1024) {
    this.buffer = new Uint8Array(initialSize)
    this.view = new DataView(this.buffer.buffer)
  }

  get length (): number {
    return this.position
  }

  private ensure (bytes: number): void {
    if (this.position + bytes <= this.buffer.length) return
    let size = this.buffer.length * 2
    while (size < this.position + bytes) size *= 2
    const next = new Uint8Array(size)
    next.set(this.buffer.subarray(0, this.position))
    this.buffer = next
    this.view = new DataView(next.buffer)
  }

  writeByte (value: number): void {
    this.ensure(1)
    this.buffer[this.position++] = value
  }

  /** Unsigned integer up to 2^53 - 1. */
  writeVarUint (value: number): void {
    this.ensure(8)
    const buffer = this.buffer
    let position = this.position
    if (value < 0x80000000) {
      // Small values (nearly all) with bit operations; larger ones need float arithmetic.
      while (value > 0x7f) {
        buffer[position++] = (value & 0x7f) | 0x80
        value >>>= 7
      }
    } else {
      while (value > 0x7f) {
        buffer[position++] = (value % 0x80) | 0x80
        value = Math.floor(value / 0x80)
      }
    }
    buffer[position++] = value
    this.position = position
  }

  /** Signed integer in (-2^52, 2^52), zigzag-encoded. */
  writeVarInt (value: number): void {
    this.writeVarUint(value < 0 ? -value * 2 - 1 : value * 2)
  }

  writeFloat64 (value: number): void {
    this.ensure(8)
    this.view.setFloat64(this.position, value)
    this.position += 8
  }

  writeFloat32 (value: number): void {
    this.ensure(4)
    this.view.setFloat32(this.position, value)
    this.position += 4
  }

  writeString (value: string): void {
    // ASCII, the common case for ids and names, needs no TextEncoder round trip.
    const length = value.length
    let ascii = true
    for (let i = 0; i < length; i++) {
      if (value.charCodeAt(i) > 0x7f) {
        ascii = false
        break
      }
    }
    if (ascii) {
      this.writeVarUint(length)
      this.ensure(length)
      for (let i = 0; i < length; i++) this.buffer[this.position++] = value.charCodeAt(i)
      return
    }
    const bytes = utf8.encode(value)
    this.writeBytes(bytes)
  }

  /** A big-endian 32-bit unsigned integer (checksums). */
  writeUint32 (value: number): void {
    this.ensure(4)
    this.view.setUint32(this.position, value >>> 0)
    this.position += 4
  }

  /** Bytes with no length in front: only as the last field. */
  writeBytesRaw (bytes: Uint8Array): void {
    this.ensure(bytes.length)
    this.buffer.set(bytes, this.position)
    this.position += bytes.length
  }

  writeBytes (bytes: Uint8Array): void {
    this.writeVarUint(bytes.length)
    this.ensure(bytes.length)
    this.buffer.set(bytes, this.position)
    this.position += bytes.length
  }

  /**
   * A JSON value; object keys are written sorted so equal values encode to
   * equal bytes. With a key dictionary, a key seen before in this encoding is
   * written as its number (1..n) and a new one as 0 followed by the key, which
   * the decoder mirrors: repeated keys (`x`, `y`) cost one byte.
   */
  writeJson (value: JsonValue, depth = 0, keys?: Map<string, number>): void {
    if (depth > MAX_JSON_DEPTH) throw new CodecError(`JSON value nested deeper than ${MAX_JSON_DEPTH}`)
    if (value === null) this.writeByte(TAG_NULL)
    else if (value === false) this.writeByte(TAG_FALSE)
    else if (value === true) this.writeByte(TAG_TRUE)
    else if (typeof value === 'number') {
      if (Number.isSafeInteger(value) && Math.abs(value) < 2 ** 52) {
        this.writeByte(TAG_INT)
        this.writeVarInt(value)
      } else if (Number.isFinite(value)) {
        if (Math.fround(value) === value) {
          this.writeByte(TAG_FLOAT32)
          this.writeFloat32(value)
        } else {
          this.writeByte(TAG_FLOAT)
          this.writeFloat64(value)
        }
      } else {
        throw new CodecError('JSON numbers must be finite')
      }
    } else if (typeof value === 'string') {
      this.writeByte(TAG_STRING)
      this.writeString(value)
    } else if (Array.isArray(value)) {
      this.writeByte(TAG_ARRAY)
      this.writeVarUint(value.length)
      for (const item of value) this.writeJson(item, depth + 1, keys)
    } else if (typeof value === 'object') {
      const names = Object.keys(value)
      if (names.length > 1 && !sorted(names)) names.sort()
      this.writeByte(TAG_OBJECT)
      this.writeVarUint(names.length)
      for (const key of names) {
        this.writeKey(key, keys)
        this.writeJson(value[key] as JsonValue, depth + 1, keys)
      }
    } else {
      throw new CodecError(`not a JSON value: ${typeof value}`)
    }
  }

  private writeKey (key: string, keys: Map<string, number> | undefined): void {
    if (keys == null) {
      this.writeString(key)
      return
    }
    const known = keys.get(key)
    if (known !== undefined) {
      this.writeVarUint(known + 1)
      return
    }
    keys.set(key, keys.size)
    this.writeVarUint(0)
    this.writeString(key)
  }

  finish (): Uint8Array {
    return this.buffer.slice(0, this.position)
  }
}

export class Decoder {
  private readonly buffer: Uint8Array
  private readonly view: DataView
  private position = 0

  constructor (bytes: Uint8Array) {
    this.buffer = bytes
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  }

  get remaining (): number {
    return this.buffer.length - this.position
  }

  get offset (): number {
    return this.position
  }

  readByte (): number {
    if (this.position >= this.buffer.length) throw new CodecError(`unexpected end of input at byte ${this.position}`)
    return this.buffer[this.position++]!
  }

  readVarUint (): number {
    let result = 0
    let multiplier = 1
    for (let i = 0; i < 8; i++) {
      const byte = this.readByte()
      result += (byte & 0x7f) * multiplier
      if (byte < 0x80) {
        if (result > Number.MAX_SAFE_INTEGER) throw new CodecError('varint larger than 2^53')
        return result
      }
      multiplier *= 0x80
    }
    throw new CodecError('varint longer than 8 bytes')
  }

  readVarInt (): number {
    const zigzag = this.readVarUint()
    return zigzag % 2 === 0 ? zigzag / 2 : -(zigzag + 1) / 2
  }

  readFloat64 (): number {
    if (this.remaining < 8) throw new CodecError('unexpected end of input in a float')
    const value = this.view.getFloat64(this.position)
    this.position += 8
    return value
  }

  /** A length that must fit in what is left (each item takes at least `minItemBytes`). */
  readLength (minItemBytes = 1): number {
    const length = this.readVarUint()
    if (length * minItemBytes > this.remaining) throw new CodecError(`length ${length} exceeds the ${this.remaining} bytes left`)
    return length
  }

  readString (): string {
    const length = this.readLength()
    if (length > MAX_STRING_BYTES) throw new CodecError(`string of ${length} bytes is too long`)
    const start = this.position
    const end = start + length
    let ascii = true
    for (let i = start; i < end; i++) {
      if (this.buffer[i]! > 0x7f) {
        ascii = false
        break
      }
    }
    this.position = end
    // Short ASCII strings (ids, names): cheaper than TextDecoder, which dominates decoding otherwise.
    if (ascii && length < 64) {
      let text = ''
      for (let i = start; i < end; i++) text += String.fromCharCode(this.buffer[i]!)
      return text
    }
    try {
      return utf8Decoder.decode(this.buffer.subarray(start, end))
    } catch {
      throw new CodecError('string is not valid UTF-8')
    }
  }

  readUint32 (): number {
    if (this.remaining < 4) throw new CodecError(`unexpected end of input at byte ${this.position}`)
    const value = this.view.getUint32(this.position)
    this.position += 4
    return value
  }

  /** Everything left, as a view (no copy). */
  readRest (): Uint8Array {
    const rest = this.buffer.subarray(this.position)
    this.position = this.buffer.length
    return rest
  }

  /** Exactly `length` bytes, as a copy. */
  readFixed (length: number): Uint8Array {
    if (this.remaining < length) throw new CodecError(`unexpected end of input: ${length} bytes wanted, ${this.remaining} left`)
    const bytes = this.buffer.slice(this.position, this.position + length)
    this.position += length
    return bytes
  }

  readBytes (): Uint8Array {
    const length = this.readLength()
    const bytes = this.buffer.slice(this.position, this.position + length)
    this.position += length
    return bytes
  }

  readFloat32 (): number {
    if (this.remaining < 4) throw new CodecError('unexpected end of input in a float')
    const value = this.view.getFloat32(this.position)
    this.position += 4
    return value
  }

  private readKey (keys: string[] | undefined): string {
    if (keys == null) return this.readString()
    const ref = this.readVarUint()
    if (ref === 0) {
      const key = this.readString()
      keys.push(key)
      return key
    }
    const key = keys[ref - 1]
    if (key === undefined) throw new CodecError(`object key ${ref} not yet defined`)
    return key
  }

  readJson (depth = 0, keys?: string[]): JsonValue {
    if (depth > MAX_JSON_DEPTH) throw new CodecError(`JSON value nested deeper than ${MAX_JSON_DEPTH}`)
    const tag = this.readByte()
    switch (tag) {
      case TAG_NULL: return null
      case TAG_FALSE: return false
      case TAG_TRUE: return true
      case TAG_INT: return this.readVarInt()
      case TAG_FLOAT: {
        const value = this.readFloat64()
        if (!Number.isFinite(value)) throw new CodecError('JSON numbers must be finite')
        return value
      }
      case TAG_FLOAT32: {
        const value = this.readFloat32()
        if (!Number.isFinite(value)) throw new CodecError('JSON numbers must be finite')
        return value
      }
      case TAG_STRING: return this.readString()
      case TAG_ARRAY: {
        const length = this.readLength()
        const items: JsonValue[] = new Array(length)
        for (let i = 0; i < length; i++) items[i] = this.readJson(depth + 1, keys)
        return items
      }
      case TAG_OBJECT: {
        const length = this.readLength(2)
        const object: Record<string, JsonValue> = {}
        for (let i = 0; i < length; i++) {
          const key = this.readKey(keys)
          if (key === '__proto__') throw new CodecError('object key __proto__ is not allowed')
          object[key] = this.readJson(depth + 1, keys)
        }
        return object
      }
      default:
        throw new CodecError(`unknown JSON tag ${tag}`)
    }
  }

  /** Asserts the input was consumed exactly: trailing bytes mean it was not what it claimed to be. */
  end (): void {
    if (this.position !== this.buffer.length) throw new CodecError(`${this.buffer.length - this.position} trailing bytes`)
  }
}
