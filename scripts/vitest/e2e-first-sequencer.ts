/**
 * vitest sequencer: the end-to-end files start first, then vitest's own order (failed
 * first, then longest first by the durations it cached, or largest first on a fresh clone).
 * e2e/device.test.ts alone takes about 40 s (it waits out a device's planned token
 * refresh) while every other file is done within 20 s; on a fresh clone, with no durations
 * cached yet, vitest would start it ninth and the run would end with it running alone.
 */
import { BaseSequencer, type TestSpecification } from 'vitest/node';

const isE2e = (spec: TestSpecification): boolean => /[\\/]e2e[\\/]/.test(spec.moduleId);

export class E2eFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    return [...sorted.filter(isE2e), ...sorted.filter((f) => !isE2e(f))];
  }
}
