/** One chat line as the room keeps it. */
export function format(text: string, from: string): string {
  return `${from.slice(0, 4)}: ${text.trim().slice(0, 200)}`;
}
