@echo off
rem Start the supervisor (exit manager first, then the day trader) in .venv-daytrader.
rem Creates the virtual environment the first time and installs requirements.txt whenever it
rem changed since the last successful install (after a git pull, a failed first install).
rem Arguments are passed through, e.g.  start_supervisor.bat --allocation 0.2
setlocal
cd /d "%~dp0"
set VENV=.venv-daytrader
set STAMP=%VENV%\requirements.installed
if not exist "%VENV%\Scripts\python.exe" (
    echo creating %VENV% ^(first start only^)
    py -3.11 -m venv "%VENV%" 2>nul || python -m venv "%VENV%"
    if errorlevel 1 (
        echo error: could not create %VENV%: install Python 3.11 from python.org
        goto failed
    )
)
fc /b requirements.txt "%STAMP%" >nul 2>&1
if errorlevel 1 (
    echo installing requirements.txt into %VENV%
    "%VENV%\Scripts\python.exe" -m pip install --disable-pip-version-check -r requirements.txt
    if errorlevel 1 (
        echo error: installing requirements.txt failed; see the messages above, then start again
        goto failed
    )
    copy /y requirements.txt "%STAMP%" >nul
)
"%VENV%\Scripts\python.exe" supervisor.py %*
if errorlevel 1 goto failed
exit /b 0

:failed
set CODE=%ERRORLEVEL%
if "%CODE%"=="0" set CODE=1
rem Started by a double click: keep the window open so the error can be read.
echo %CMDCMDLINE% | find /i "/c" >nul && pause
exit /b %CODE%
