// Refreshes docs/screenshots/*.png (run by scripts/screenshots.sh): a real
// parleyd, two users who chat, and one phone-sized screenshot per screen.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  startServer, launchBrowser, newContext, register, openChatWith, send, navLink, myMessage, kRepoRoot,
} from './helpers.mjs';

const out = join(kRepoRoot, 'docs', 'screenshots');
mkdirSync(out, { recursive: true });
const server = await startServer();
const browser = await launchBrowser();
try {
  const alice = await newContext(browser, server.base, { deviceScaleFactor: 2 });
  const bob = await newContext(browser, server.base, { deviceScaleFactor: 2 });
  await alice.page.goto('/');
  await alice.page.getByLabel('Username').waitFor();
  await alice.page.screenshot({ path: join(out, 'login.png') });
  await register(alice.page, 'alice');
  await register(bob.page, 'bob');
  for (const [c, name, about] of [[alice, 'Alice Liddell', 'down the rabbit hole'], [bob, 'Bob Marley', 'one love']]) {
    await navLink(c.page, 'Profile').click();
    await c.page.getByLabel('Display name').fill(name);
    await c.page.getByLabel('About').fill(about);
    await c.page.getByRole('button', { name: 'Save profile' }).click();
    await c.page.getByText('Profile saved.').waitFor();
  }
  await openChatWith(bob.page, 'alice');
  await send(bob.page, 'Hi Alice! Are we still on for lunch tomorrow?');
  await navLink(alice.page, 'Chats').click();
  await alice.page.locator('a.conv[data-unread="1"]').waitFor();
  await alice.page.screenshot({ path: join(out, 'chats.png') });
  await alice.page.locator('a.conv').first().click();
  await send(alice.page, 'Yes! 12:30 at the usual place?');
  await send(bob.page, 'Perfect, see you there!');
  await alice.page.locator('li.msg.theirs .body', { hasText: 'see you there' }).waitFor();
  await send(alice.page, 'Bring the book, please.');
  await myMessage(alice.page, 'Bring the book').and(alice.page.locator('[data-tick="read"]')).waitFor();
  await bob.page.locator('#composer').pressSequentially('Of course');
  await alice.page.locator('#chat-status[data-typing="1"]').waitFor();
  await alice.page.screenshot({ path: join(out, 'chat.png') });
  await navLink(alice.page, 'Contacts').click();
  await alice.page.getByLabel('Search users by name').fill('bo');
  await alice.page.getByRole('button', { name: 'Search', exact: true }).click();
  await alice.page.getByRole('button', { name: 'Add bob' }).click();
  await alice.page.locator('#contact-list li').waitFor();
  await alice.page.screenshot({ path: join(out, 'contacts.png') });
  await navLink(alice.page, 'Devices').click();
  await alice.page.locator('li[data-device-id]').first().waitFor();
  await alice.page.screenshot({ path: join(out, 'devices.png') });
  await navLink(alice.page, 'Profile').click();
  await alice.page.getByLabel('Display name').waitFor();
  await alice.page.screenshot({ path: join(out, 'profile.png') });
  await alice.context.setOffline(true);
  await navLink(alice.page, 'Chats').click();
  await alice.page.locator('#conn-status[data-state="offline"]').waitFor();
  await alice.page.screenshot({ path: join(out, 'offline.png') });
  console.log(`screenshots written to ${out}`);
} finally {
  await browser.close();
  await server.stop();
}
