#!/usr/bin/env bash
# Builds Easel.app: a release build with Metal, wrapped in an app bundle and signed ad hoc.
# Run on a Mac with the Xcode command line tools (sips, iconutil, codesign).
set -euo pipefail
cd "$(dirname "$0")"

cargo build --release --features metal

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
app=target/Easel.app
iconset=target/Easel.iconset

rm -rf "$app" "$iconset"
mkdir -p "$app/Contents/MacOS" "$app/Contents/Resources" "$iconset"
cp target/release/easel "$app/Contents/MacOS/easel"

for size in 16 32 128 256 512; do
  sips -z "$size" "$size" assets/icon.png --out "$iconset/icon_${size}x${size}.png" >/dev/null
  double=$((size * 2))
  sips -z "$double" "$double" assets/icon.png --out "$iconset/icon_${size}x${size}@2x.png" >/dev/null
done
iconutil -c icns "$iconset" -o "$app/Contents/Resources/Easel.icns"

cat > "$app/Contents/Info.plist" <<PLIST
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>CFBundleName</key><string>Easel</string>
  <key>CFBundleDisplayName</key><string>Easel</string>
  <key>CFBundleIdentifier</key><string>app.easel.Easel</string>
  <key>CFBundleExecutable</key><string>easel</string>
  <key>CFBundleIconFile</key><string>Easel</string>
  <key>CFBundlePackageType</key><string>APPL</string>
  <key>CFBundleVersion</key><string>${version}</string>
  <key>CFBundleShortVersionString</key><string>${version}</string>
  <key>LSMinimumSystemVersion</key><string>12.0</string>
  <key>NSHighResolutionCapable</key><true/>
</dict>
</plist>
PLIST

codesign --force --deep --sign - "$app"
echo "built $app"
