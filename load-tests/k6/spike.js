// Spike: from a calm rate to 10x within seconds and back; the gateway must not fail requests.
import { mixedRequest } from './lib.js';

const base = Number(__ENV.RATE || 500);

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: base,
      timeUnit: '1s',
      preAllocatedVUs: 64,
      maxVUs: 1024,
      stages: [
        { duration: '30s', target: base },
        { duration: '5s', target: base * 10 },
        { duration: '30s', target: base * 10 },
        { duration: '5s', target: base },
        { duration: '30s', target: base },
      ],
    },
  },
  thresholds: {
    checks: ['rate>0.999'],
    http_req_duration: ['p(99)<250'],
  },
};

export default function () {
  mixedRequest();
}
