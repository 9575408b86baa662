/** Simulator guests for the benchmarks: `n` debian CTs from vmid 1000, every third stopped. */
export const benchGuests = (n: number) =>
  Array.from({ length: n }, (_, i) => {
    const vmid = 1000 + i
    return {
      vmid,
      status: i % 3 === 2 ? "stopped" : "running",
      config: {
        arch: "amd64",
        cores: 2,
        hostname: `guest-${vmid}`,
        memory: 2048,
        ostype: "debian",
        rootfs: `local-lvm:vm-${vmid}-disk-0,size=8G`,
        swap: 512,
        unprivileged: 1
      }
    }
  })
