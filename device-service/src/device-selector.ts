/**
 * The device selector fleet commands and rollouts share: exactly one of `ids`, `type`, `tag`,
 * `firmware`. One definition of its request schema and of the exactly-one rule, so the two
 * routes take the same selector and refuse it the same way.
 */
import { deviceIdPattern, FleetwireError } from '@fleetwire/common';

export const SELECTOR_KINDS = ['ids', 'type', 'tag', 'firmware'] as const;
export type SelectorKind = (typeof SELECTOR_KINDS)[number];

export interface DeviceSelector { ids?: string[]; type?: string; tag?: string; firmware?: string }

/** A device id in a request (contracts/topics.json device_id_pattern). */
export const deviceIdSchema = { type: 'string', pattern: deviceIdPattern.source } as const;

/** The selector's JSON schema; selectorKind() checks that exactly one kind is given. */
export const deviceSelectorSchema = {
  type: 'object', description: 'exactly one of ids, type, tag, firmware',
  properties: {
    ids: { type: 'array', minItems: 1, maxItems: 10_000, uniqueItems: true, items: deviceIdSchema },
    type: { type: 'string', minLength: 1, maxLength: 64 }, tag: { type: 'string', minLength: 1, maxLength: 64 },
    firmware: { type: 'string', minLength: 1, maxLength: 64 },
  },
} as const;

/** The one kind the selector gives; VALIDATION_FAILED when it gives none or several. */
export function selectorKind(selector: DeviceSelector): SelectorKind {
  const kinds = SELECTOR_KINDS.filter((k) => selector[k] !== undefined);
  if (kinds.length !== 1) throw new FleetwireError('VALIDATION_FAILED', `selector takes exactly one of ${SELECTOR_KINDS.join(', ')}`);
  return kinds[0]!;
}
