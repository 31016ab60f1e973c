// Service worker: keeps the app shell so the page loads while offline.
//
// Shell files are cached at install. Requests for them go to the network
// first (so a running server always serves its current client) and fall back
// to the cache when the network fails or takes longer than
// kNetworkTimeoutMs; every successful answer refreshes the cache. Nothing
// else (the WebSocket, /healthz, /metrics, /admin) is touched. Data lives in
// IndexedDB (js/db.js), not here.
const kCacheName = 'parley-shell-v1';
const kNetworkTimeoutMs = 3000;
const kShell = [
  '/',
  '/index.html',
  '/css/app.css',
  '/js/app.js',
  '/js/connection.js',
  '/js/db.js',
  '/js/dom.js',
  '/js/state.js',
  '/manifest.webmanifest',
  '/icon.svg',
];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(kCacheName).then((c) => c.addAll(kShell)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) if (key !== kCacheName) await caches.delete(key);
    await self.clients.claim();
  })());
});

function shellKey(request) {
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || request.method !== 'GET') return null;
  if (request.mode === 'navigate') return '/';
  return kShell.includes(url.pathname) ? url.pathname : null;
}

self.addEventListener('fetch', (event) => {
  const key = shellKey(event.request);
  if (!key) return;
  event.respondWith((async () => {
    const cache = await caches.open(kCacheName);
    let timer;
    const network = fetch(event.request).then((res) => {
      if (res.ok) cache.put(key, res.clone());
      return res;
    });
    network.catch(() => {}); // a failure is handled below (cache fallback)
    const timeout = new Promise((resolve) => { timer = setTimeout(resolve, kNetworkTimeoutMs); });
    try {
      const res = await Promise.race([network, timeout]);
      if (res) return res;
    } catch {
      // offline: fall through to the cache
    } finally {
      clearTimeout(timer);
    }
    const cached = await cache.match(key);
    if (cached) return cached;
    return network; // not cached yet: whatever the network says
  })());
});
