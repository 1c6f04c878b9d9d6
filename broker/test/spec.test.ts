/** The broker's part of `fleetwire spec` and GET /v1/spec prints only settings marked as limits. */
import { describe, expect, it } from 'vitest';
import { brokerDefaults, brokerSpecReport, type BrokerConfig } from '@fleetwire/broker';

describe('broker spec', () => {
  const config = brokerDefaults({
    redisUrl: 'redis://:redis-password-1@cache.internal:6379', jwksUrl: 'https://auth.internal/jwks.json?token=jwks-token-2',
    tlsKeyFile: '/etc/fleetwire/tls-key-3.pem', dataDir: '/srv/fleetwire-data-4', trustedProxies: ['10.77.0.5'],
  });

  it('reports features and limits, never addresses, paths or credentials', () => {
    const report = brokerSpecReport(config) as { features: Record<string, unknown>; limits: Record<string, unknown> };
    expect(report.features).toMatchObject({ tls: false, cluster: 'none', token_source: 'jwks' });
    expect(report.limits).toMatchObject({ publishPerS: 50, maxConnectionsPerIp: 1000, wsMaxPayloadBytes: 262_144 });
    const text = JSON.stringify(report);
    for (const secret of ['redis-password-1', 'jwks-token-2', 'tls-key-3', 'fleetwire-data-4', '10.77.0.5']) expect(text).not.toContain(secret);
  });

  it('does not print a setting nobody marked as a limit (an allow-list, not a deny-list)', () => {
    const withNewSetting = { ...config, webhookSigningSecret: 'whsec-5' } as BrokerConfig;
    expect(JSON.stringify(brokerSpecReport(withNewSetting))).not.toContain('whsec-5');
  });
});
