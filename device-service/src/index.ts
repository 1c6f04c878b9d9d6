/** @fleetwire/device-service public API. */
export { buildDeviceService, type DeviceService } from './app.js';
export { deviceServiceSpec, loadDeviceServiceConfig, deviceServiceDefaults, type DeviceServiceConfig } from './config.js';
export { service as deviceService } from './service.js';
