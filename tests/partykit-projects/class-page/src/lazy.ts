/** Loaded with a dynamic import: the page bundle splits it into a chunk of its own. */
export function banner(label: string): string {
  return `built as ${label}`;
}
