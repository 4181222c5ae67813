-- autoroute.lua: Orthanc auto-routing of stable studies to the medversa-node AI node.
--
-- When a study becomes stable (no new instance for "StableAge" seconds), send its ORIGINAL
-- images to the node, and never the node's own results:
--
--   * skipped: instances received from the node itself (instance metadata "RemoteAET" equal to
--     the node's AE title, case-insensitive, spaces trimmed);
--   * skipped: instances of a series whose Series Description contains the results marker
--     ("MedVersa", case-insensitive) or whose Manufacturer is the node's ("medversa-node");
--   * skipped: result object types, whoever sent them: every Structured Report and Key Object
--     Selection (SOP classes 1.2.840.10008.5.1.4.1.1.88.*), every presentation state (GSPS,
--     CSPS and the other 1.2.840.10008.5.1.4.1.1.11.*), Segmentation (1.2.840.10008.5.1.4.1.1.66.4
--     and the other 66.*), and series whose Modality is SR, SEG, PR, KO; except a reader's
--     annotation object (below);
--   * a reader's annotation object: an Enhanced / Comprehensive / Comprehensive 3D SR (a TID 1500
--     measurement report, e.g. OHIF's "Create report") or a Grayscale Softcopy Presentation State
--     that the node did not make (not from the node's AE title, Manufacturer, series marker), is
--     forwarded AT ONCE when it is stored (OnStoredInstance), without waiting for the study to be
--     stable: the node answers the reader's question about it (its own answer SR comes back marked
--     as the node's, and is never forwarded). "ForwardAnnotations": false turns this off;
--   * skipped: instances already forwarded. A study becomes stable again whenever something new
--     arrives, in particular the node's results; its originals are then not sent a second time.
--     Only instances never forwarded (a late image) go out. The mark is the instance metadata
--     named by "ForwardedMetadata" (it must be declared in "UserMetadata"); without it the
--     script remembers forwarded instances in memory until Orthanc restarts.
--
-- The instances to forward go to the node in ONE asynchronous Orthanc job
-- (POST /modalities/{Modality}/store), so the Lua engine is never blocked by a slow network.
-- A failed job is resubmitted up to "MaxRetries" times; after that it stays in Orthanc's job list
-- (Orthanc Explorer "Jobs", or POST /jobs/{id}/resubmit) for an operator.
--
-- Settings, all optional, in the Orthanc configuration (read with GetOrthancConfiguration()):
--
--   "MedversaRouting" : {
--     "Enabled" : true,                        // false: load the script but forward nothing
--     "Modality" : "medversa",                 // symbolic name of the node in "DicomModalities"
--     "NodeAet" : "MEDVERSA",                  // the node's AE title (its results come from it)
--     "SeriesDescriptionMarker" : "MedVersa",  // results series carry this in Series Description
--     "NodeManufacturer" : "medversa-node",    // Manufacturer of the node's result objects ("" : off)
--     "ForwardedMetadata" : "MedversaForwarded", // user metadata marking forwarded instances
--     "ForwardAnnotations" : true,             // forward readers' annotation objects (SR, GSPS) at once
--     "LocalAet" : "",                         // calling AE for the C-STORE ("" : Orthanc's DicomAet)
--     "MaxRetries" : 3                         // resubmissions of a failed forwarding job
--   }
--
-- Log lines start with "MedversaRouting:" (Orthanc prints them as "Lua says: ...") and name
-- studies and instances by their Orthanc identifiers only, never by patient data.
--
-- Tested against Orthanc 1.10.1 (Debian 12) by tests/test_orthanc_autoroute.py.

local DEFAULTS = {
   Enabled = true,
   Modality = 'medversa',
   NodeAet = 'MEDVERSA',
   SeriesDescriptionMarker = 'MedVersa',
   NodeManufacturer = 'medversa-node',
   ForwardedMetadata = 'MedversaForwarded',
   ForwardAnnotations = true,
   LocalAet = '',
   MaxRetries = 3,
}

-- SOP Class UID prefixes of result objects (PS3.4 Table B.5-1): SR and KOS, presentation
-- states, raw data / spatial registration / segmentation.
local RESULT_SOP_CLASS_PREFIXES = {
   '1.2.840.10008.5.1.4.1.1.88.',
   '1.2.840.10008.5.1.4.1.1.11.',
   '1.2.840.10008.5.1.4.1.1.66',
}

-- Modalities of result objects (PS3.3 C.7.3.1.1.1).
local RESULT_MODALITIES = { SR = true, SEG = true, PR = true, KO = true }

-- SOP classes of a reader's annotation objects (PS3.4 Table B.5-1): the node reads their regions.
local ANNOTATION_SOP_CLASSES = {
   ['1.2.840.10008.5.1.4.1.1.88.22'] = true,  -- Enhanced SR (OHIF / dcmjs measurement reports)
   ['1.2.840.10008.5.1.4.1.1.88.33'] = true,  -- Comprehensive SR
   ['1.2.840.10008.5.1.4.1.1.88.34'] = true,  -- Comprehensive 3D SR
   ['1.2.840.10008.5.1.4.1.1.11.1'] = true,   -- Grayscale Softcopy Presentation State
}


local function Trim(s)
   return (string.gsub(s or '', '^%s*(.-)%s*$', '%1'))
end


local function StartsWith(s, prefix)
   return string.sub(s, 1, string.len(prefix)) == prefix
end


local function ContainsIgnoringCase(haystack, needle)
   if needle == nil or needle == '' or haystack == nil then
      return false
   end
   return string.find(string.lower(haystack), string.lower(needle), 1, true) ~= nil
end


local function Log(message)
   print('MedversaRouting: ' .. message)
end


local function LoadSettings()
   local configuration = GetOrthancConfiguration() or {}
   local given = configuration['MedversaRouting'] or {}
   local settings = {}
   for key, default in pairs(DEFAULTS) do
      local value = given[key]
      if value == nil or type(value) ~= type(default) then
         if value ~= nil then
            Log('ignoring MedversaRouting.' .. key .. ' (expected a ' .. type(default) .. ')')
         end
         value = default
      end
      if type(value) == 'number' then
         value = math.floor(value)  -- JSON numbers arrive as floats (3.0)
      end
      settings[key] = value
   end
   settings.NodeAet = string.upper(Trim(settings.NodeAet))

   -- The forwarded mark persists only if Orthanc knows the metadata name.
   local userMetadata = configuration['UserMetadata'] or {}
   settings.PersistentMarks = (settings.ForwardedMetadata ~= '' and
                               userMetadata[settings.ForwardedMetadata] ~= nil)

   local modalities = configuration['DicomModalities'] or {}
   if modalities[settings.Modality] == nil then
      Log('WARNING: no DicomModalities entry "' .. settings.Modality ..
          '"; studies cannot be forwarded to the node')
   end
   return settings
end


local SETTINGS = LoadSettings()

-- Instances forwarded since start-up (also used when the metadata mark is not configured).
local forwardedInMemory = {}

-- Our forwarding jobs: job ID -> { study = Orthanc study ID, attempts = resubmissions so far }.
local ourJobs = {}


local function GetJson(uri)
   local body = RestApiGet(uri)
   if body == nil then
      return nil
   end
   return ParseJson(body)
end


-- Instance metadata as a table name -> value ("RemoteAET", "SopClassUid", our mark, ...).
local function InstanceMetadata(instanceId)
   local expanded = GetJson('/instances/' .. instanceId .. '/metadata?expand')
   if expanded == nil then
      return {}
   end
   if expanded[1] == nil then
      return expanded  -- { name = value }
   end
   -- An Orthanc without "?expand" on metadata answers a list of names.
   local values = {}
   for _, name in ipairs(expanded) do
      values[name] = RestApiGet('/instances/' .. instanceId .. '/metadata/' .. name)
   end
   return values
end


local function SopClassOf(instanceId, metadata)
   local sopClass = metadata['SopClassUid']
   if sopClass == nil or sopClass == '' then
      sopClass = RestApiGet('/instances/' .. instanceId .. '/content/0008,0016') or ''
   end
   return (string.gsub(sopClass, '[%c%s]', ''))  -- UIDs may be padded with NUL or space
end


-- Why a series was made by the node (nil: by someone else): its marker or its Manufacturer.
local function NodeSeriesReason(mainTags)
   if ContainsIgnoringCase(mainTags['SeriesDescription'], SETTINGS.SeriesDescriptionMarker) then
      return 'series description marked ' .. SETTINGS.SeriesDescriptionMarker
   end
   if SETTINGS.NodeManufacturer ~= '' and
      string.lower(Trim(mainTags['Manufacturer'])) == string.lower(SETTINGS.NodeManufacturer) then
      return 'manufacturer ' .. SETTINGS.NodeManufacturer
   end
   return nil
end


-- Why a series holds results (nil: it may hold originals).
local function ResultSeriesReason(mainTags)
   local modality = string.upper(Trim(mainTags['Modality']))
   if RESULT_MODALITIES[modality] then
      return 'modality ' .. modality
   end
   return NodeSeriesReason(mainTags)
end


-- Whether an instance is a reader's annotation object to forward (never one of the node's).
local function IsReaderAnnotation(instanceId, metadata, seriesTags)
   if not SETTINGS.ForwardAnnotations then
      return false
   end
   local remoteAet = string.upper(Trim(metadata['RemoteAET']))
   if (remoteAet ~= '' and remoteAet == SETTINGS.NodeAet) or NodeSeriesReason(seriesTags) ~= nil then
      return false
   end
   return ANNOTATION_SOP_CLASSES[SopClassOf(instanceId, metadata)] == true
end


-- Why an instance is a result (nil: it is an original image).
local function ResultInstanceReason(instanceId, metadata)
   local remoteAet = string.upper(Trim(metadata['RemoteAET']))
   if remoteAet ~= '' and remoteAet == SETTINGS.NodeAet then
      return 'received from the node (' .. remoteAet .. ')'
   end
   local sopClass = SopClassOf(instanceId, metadata)
   for _, prefix in ipairs(RESULT_SOP_CLASS_PREFIXES) do
      if StartsWith(sopClass, prefix) then
         return 'result SOP class ' .. sopClass
      end
   end
   return nil
end


local function AlreadyForwarded(instanceId, metadata)
   if forwardedInMemory[instanceId] then
      return true
   end
   return SETTINGS.PersistentMarks and metadata[SETTINGS.ForwardedMetadata] ~= nil
end


local function MarkForwarded(instanceIds, jobId)
   for _, instanceId in ipairs(instanceIds) do
      forwardedInMemory[instanceId] = true
      if SETTINGS.PersistentMarks then
         RestApiPut('/instances/' .. instanceId .. '/metadata/' .. SETTINGS.ForwardedMetadata,
                    jobId or 'forwarded')
      end
   end
end


local function Forward(studyId, instanceIds)
   local request = { Resources = instanceIds, Synchronous = false, Permissive = false }
   if SETTINGS.LocalAet ~= '' then
      request['LocalAet'] = SETTINGS.LocalAet
   end
   local answer = RestApiPost('/modalities/' .. SETTINGS.Modality .. '/store', DumpJson(request, true))
   if answer == nil then
      return nil
   end
   local job = ParseJson(answer)
   local jobId = job and job['ID']
   if jobId ~= nil then
      ourJobs[jobId] = { study = studyId, attempts = 0 }
   end
   return jobId or 'unknown'
end


function OnStableStudy(studyId, tags, metadata)
   if not SETTINGS.Enabled then
      return
   end

   local series = GetJson('/studies/' .. studyId .. '/series?expand')
   if series == nil then
      Log('study ' .. studyId .. ': cannot list its series (deleted meanwhile?)')
      return
   end

   local toForward = {}
   local results = 0
   local already = 0
   for _, oneSeries in ipairs(series) do
      local seriesTags = oneSeries['MainDicomTags'] or {}
      local seriesReason = ResultSeriesReason(seriesTags)
      for _, instanceId in ipairs(oneSeries['Instances'] or {}) do
         local instanceMetadata = InstanceMetadata(instanceId)
         local reason = nil
         if not IsReaderAnnotation(instanceId, instanceMetadata, seriesTags) then
            reason = seriesReason or ResultInstanceReason(instanceId, instanceMetadata)
         end
         if reason ~= nil then
            results = results + 1
         elseif AlreadyForwarded(instanceId, instanceMetadata) then
            already = already + 1
         else
            table.insert(toForward, instanceId)
         end
      end
   end

   local sent = 'nothing forwarded'
   if #toForward > 0 then
      local jobId = Forward(studyId, toForward)
      if jobId == nil then
         Log('study ' .. studyId .. ': ERROR: could not submit the forwarding job to ' ..
             SETTINGS.Modality .. '; it will be tried again when the study changes')
         return
      end
      MarkForwarded(toForward, jobId)
      sent = #toForward .. ' forwarded to ' .. SETTINGS.Modality .. ' (job ' .. jobId .. ')'
   end
   Log('study ' .. studyId .. ': ' .. sent .. ', ' .. results .. ' result object(s) skipped, ' ..
       already .. ' already forwarded')
end


-- A reader's annotation object goes to the node as soon as it is stored: the reader waits for the answer.
function OnStoredInstance(instanceId, tags, metadata, origin)
   if not SETTINGS.Enabled or not SETTINGS.ForwardAnnotations then
      return
   end
   local instanceMetadata = InstanceMetadata(instanceId)
   if not ANNOTATION_SOP_CLASSES[SopClassOf(instanceId, instanceMetadata)] then
      return
   end
   local series = GetJson('/instances/' .. instanceId .. '/series')
   if series == nil then
      return
   end
   local studyId = series['ParentStudy'] or '?'
   if not IsReaderAnnotation(instanceId, instanceMetadata, series['MainDicomTags'] or {}) then
      Log('study ' .. studyId .. ': ' .. instanceId .. ' is the node\'s own result, not forwarded')
      return
   end
   if AlreadyForwarded(instanceId, instanceMetadata) then
      return
   end
   local jobId = Forward(studyId, { instanceId })
   if jobId == nil then
      Log('study ' .. studyId .. ': ERROR: could not forward annotation ' .. instanceId ..
          '; it goes with the stable study')
      return
   end
   MarkForwarded({ instanceId }, jobId)
   Log('study ' .. studyId .. ': annotation ' .. instanceId .. ' forwarded to ' .. SETTINGS.Modality ..
       ' at once (job ' .. jobId .. ')')
end


function OnJobSuccess(jobId)
   local job = ourJobs[jobId]
   if job ~= nil then
      Log('study ' .. job.study .. ': job ' .. jobId .. ' delivered')
      ourJobs[jobId] = nil
   end
end


function OnJobFailure(jobId)
   local job = ourJobs[jobId]
   if job == nil then
      return
   end
   if job.attempts < SETTINGS.MaxRetries then
      job.attempts = job.attempts + 1
      Log('study ' .. job.study .. ': job ' .. jobId .. ' failed; resubmitting (' ..
          job.attempts .. '/' .. SETTINGS.MaxRetries .. ')')
      RestApiPost('/jobs/' .. jobId .. '/resubmit', '')
   else
      Log('study ' .. job.study .. ': ERROR: job ' .. jobId .. ' failed ' ..
          (job.attempts + 1) .. ' time(s); resubmit it from the Orthanc job list')
      ourJobs[jobId] = nil
   end
end


Log('loaded: stable studies go to "' .. SETTINGS.Modality .. '", never instances from ' ..
    SETTINGS.NodeAet .. ' or series marked "' .. SETTINGS.SeriesDescriptionMarker .. '"' ..
    (SETTINGS.Enabled and '' or ' (DISABLED)') ..
    (SETTINGS.PersistentMarks and '' or '; forwarded marks kept in memory only (declare "' ..
     SETTINGS.ForwardedMetadata .. '" in UserMetadata to keep them)'))
