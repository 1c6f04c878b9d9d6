/** The device service's Redis scripts: src/lua/*.lua, defined as commands named device_<script>. */
import { defineScripts, type Redis } from '@fleetwire/common';

// src/lua/ from src/ (tests) and dist/ (built) alike: both sit at the same depth, and the image keeps src/.
const dir = new URL('../src/lua/', import.meta.url);

export function deviceScripts<T extends object>(redis: Redis): T {
  return defineScripts<T>(redis, 'device', dir);
}
