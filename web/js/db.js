// Local storage in IndexedDB (database "parley", one per origin):
//   kv      key -> value: the session (token, user, device), the synced state
//           (conversations, messages, watermarks, contacts, `applied` cursor)
//   outbox  messages written but not yet acknowledged by the server, in the
//           order they were written (auto-increment key), each with the
//           client id chosen before the first attempt.
// Everything survives a reload, offline included.

const kDbName = 'parley';
const kDbVersion = 1;

let dbPromise = null;

function open() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const req = indexedDB.open(kDbName, kDbVersion);
      req.onupgradeneeded = () => {
        const db = req.result;
        if (!db.objectStoreNames.contains('kv')) db.createObjectStore('kv');
        if (!db.objectStoreNames.contains('outbox')) db.createObjectStore('outbox', { keyPath: 'order', autoIncrement: true });
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }
  return dbPromise;
}

async function tx(store, mode, fn) {
  const db = await open();
  return new Promise((resolve, reject) => {
    const t = db.transaction(store, mode);
    const s = t.objectStore(store);
    let result;
    const req = fn(s);
    if (req) req.onsuccess = () => (result = req.result);
    t.oncomplete = () => resolve(result);
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error);
  });
}

export const kv = {
  get: (key) => tx('kv', 'readonly', (s) => s.get(key)),
  set: (key, value) => tx('kv', 'readwrite', (s) => s.put(value, key)),
  del: (key) => tx('kv', 'readwrite', (s) => s.delete(key)),
};

export const outbox = {
  // Returns the entry with its `order` key set.
  add: async (entry) => {
    const order = await tx('outbox', 'readwrite', (s) => s.add(entry));
    return { ...entry, order };
  },
  all: () => tx('outbox', 'readonly', (s) => s.getAll()),
  put: (entry) => tx('outbox', 'readwrite', (s) => s.put(entry)),
  remove: (order) => tx('outbox', 'readwrite', (s) => s.delete(order)),
};

export async function clearAll() {
  await tx('kv', 'readwrite', (s) => s.clear());
  await tx('outbox', 'readwrite', (s) => s.clear());
}
