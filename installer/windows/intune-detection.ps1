# Intune detection rule for the Cadence agent (Win32 app, "Use a custom detection script").
# Intune counts the app as installed when this script exits 0 and writes to standard output.
# The simpler alternative rule: "MSI" with the product code of the MSI you upload.
$exe = Join-Path $env:ProgramFiles 'Cadence\cadence-agent.exe'
$key = 'HKLM:\Software\Cadence\Agent'
if ((Test-Path $exe) -and (Test-Path $key)) {
    $version = (Get-ItemProperty -Path $key -Name Version -ErrorAction SilentlyContinue).Version
    $reported = & $exe --version 2>$null
    if ($version -and $reported -eq "cadence-agent $version") {
        Write-Output "Cadence agent $version detected"
        exit 0
    }
}
exit 1
