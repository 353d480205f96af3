/** A tiny typed event emitter (no dependency). `Events` maps an event name
 * to its listener's argument. */
export class Emitter<Events extends Record<string, unknown>> {
  private readonly listeners = new Map<keyof Events, Set<(value: never) => void>>()

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events> (event: K, listener: (value: Events[K]) => void): () => void {
    let set = this.listeners.get(event)
    if (set === undefined) {
      set = new Set()
      this.listeners.set(event, set)
    }
    set.add(listener as (value: never) => void)
    return () => this.off(event, listener)
  }

  /** Adds a listener called once. */
  once<K extends keyof Events> (event: K, listener: (value: Events[K]) => void): () => void {
    const off = this.on(event, (value) => {
      off()
      listener(value)
    })
    return off
  }

  off<K extends keyof Events> (event: K, listener: (value: Events[K]) => void): void {
    this.listeners.get(event)?.delete(listener as (value: never) => void)
  }

  /** Calls every listener of `event`; a throwing listener does not stop the
   * others (its error is reported on the console). */
  emit<K extends keyof Events> (event: K, value: Events[K]): void {
    const set = this.listeners.get(event)
    if (set === undefined) return
    for (const listener of [...set]) {
      try {
        (listener as (value: Events[K]) => void)(value)
      } catch (err) {
        console.error(`seqsync: a '${String(event)}' listener threw`, err)
      }
    }
  }

  listenerCount<K extends keyof Events> (event: K): number {
    return this.listeners.get(event)?.size ?? 0
  }
}
