/** The device service as a Fleetwire service: `fleetwire device-service` alone, or one of `fleetwire up`. */
import type { ServiceDefinition } from '@fleetwire/common';
import { buildDeviceService } from './app.js';
import { deviceCommands } from './cli.js';
import { firmwareCommands } from './firmware/cli.js';
import { loadDeviceServiceConfig, type DeviceServiceConfig } from './config.js';
import { deviceServiceSpecReport } from './spec.js';
import { rolloutCommands } from './rollouts-cli.js';

export const service: ServiceDefinition<DeviceServiceConfig> = {
  name: 'device-service',
  summary: 'heartbeats into device state, silence alerts, fleet health, telemetry, and commands with their results',
  loadConfig: loadDeviceServiceConfig,
  spec: async (config) => deviceServiceSpecReport(config),
  async build(config, deps) {
    const devices = await buildDeviceService(config, deps);
    return {
      readiness: devices.readiness,
      start: (port) => devices.start(port),
      drain: () => devices.drain(),
      close: () => devices.close(),
    };
  },
  commands: [...deviceCommands, ...firmwareCommands, ...rolloutCommands],
};
